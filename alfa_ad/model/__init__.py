"""The CLIP backbone wrapper (open_clip) and its weights.

The names are imported on first use (PEP 562), so ``alfa_ad.model.names`` and
``alfa_ad.model.weights`` can be read without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {"ClipBackbone": ".backbone", "load_backbone": ".factory", "WeightsInfo": ".weights",
          "WeightsUnavailableError": ".weights"}

__all__ = ["ClipBackbone", "WeightsInfo", "WeightsUnavailableError", "load_backbone"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
