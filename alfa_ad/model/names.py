"""Model names and weight kinds, importable without torch."""

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
WEIGHT_CHOICES = ("pretrained", "random", "planted", "mini", "mini-v2")
MINI_MODEL = "alfa-mini-clip"  # --weights mini: the mini-CLIP trained here (alfa_ad/model/mini.py)
MINI_V2_MODEL = "alfa-mini-clip-v2"  # --weights mini-v2: 15 x 15 patch grid, textures (docs/mini_clip_v2.md)
MINI_WEIGHTS = {"mini": MINI_MODEL, "mini-v2": MINI_V2_MODEL}  # --weights value -> architecture
TIMM_PREFIX = "timm:"  # --model timm:<architecture>[@<side>]: a vision-only timm ViT (alfa_ad/model/timm_vit.py)
