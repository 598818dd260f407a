"""Detection methods: features -> prompt scores -> maps -> image scores."""

from .alfa import AlfaMethod
from .base import BatchScores, WindowGeometry
from .winclip import WinClipMethod

METHODS = {"alfa": AlfaMethod, "winclip": WinClipMethod}

__all__ = ["AlfaMethod", "WinClipMethod", "BatchScores", "WindowGeometry", "METHODS"]
