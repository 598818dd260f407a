"""Model names and weight kinds, importable without torch."""

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
WEIGHT_CHOICES = ("pretrained", "random", "planted")
