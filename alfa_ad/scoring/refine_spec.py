"""The ``refine_layers`` option read without torch (the CLI checks options before
torch is imported; the refinement itself is :mod:`alfa_ad.scoring.refine`)."""

from __future__ import annotations

from typing import Sequence


def parse_layers(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"11,8,5"`` or a sequence of block indices -> a tuple (None: the default)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        layers = tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(f"refine layers must be block indices separated by commas, got {value!r}") from None
    if not layers:
        raise ValueError("refine layers name no block; leave them out for the default")
    return layers
