"""The CLIP backbone wrapper (open_clip) and its weights."""

from .backbone import ClipBackbone
from .factory import load_backbone
from .weights import WeightsInfo, WeightsUnavailableError

__all__ = ["ClipBackbone", "WeightsInfo", "WeightsUnavailableError", "load_backbone"]
