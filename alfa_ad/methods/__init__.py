"""Detection methods: features -> prompt scores -> maps -> image scores.

Each method is a class satisfying :class:`~alfa_ad.methods.base.Method`, registered in
:data:`alfa_ad.registry.METHODS` (the one place methods are chosen by name).
"""

from .alfa import AlfaMethod
from .base import BatchScores, Method, ReferenceBank, WindowGeometry
from .winclip import WinClipMethod

__all__ = ["AlfaMethod", "WinClipMethod", "BatchScores", "Method", "ReferenceBank", "WindowGeometry"]
