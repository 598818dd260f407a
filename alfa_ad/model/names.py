"""Model names and weight kinds, importable without torch."""

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
WEIGHT_CHOICES = ("pretrained", "random", "planted", "mini")
MINI_MODEL = "alfa-mini-clip"  # --weights mini: the mini-CLIP trained here (alfa_ad/model/mini.py)
