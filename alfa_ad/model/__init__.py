"""The CLIP backbone wrapper (open_clip) and its weights."""

from .backbone import ClipBackbone, WeightsInfo, WeightsUnavailableError, load_backbone

__all__ = ["ClipBackbone", "WeightsInfo", "WeightsUnavailableError", "load_backbone"]
