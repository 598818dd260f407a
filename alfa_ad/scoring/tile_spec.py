"""``--tile`` values, importable without torch (the CLI checks them before any model loads)."""

from __future__ import annotations


def parse_tile(spec: str | int | None) -> str | int:
    """``"auto"``, ``"none"`` or a positive tile side in pixels; ``ValueError`` otherwise."""
    if spec is None:
        return "none"
    if isinstance(spec, int) and not isinstance(spec, bool):
        value = spec
    else:
        text = str(spec).strip().lower()
        if text in ("auto", "none"):
            return text
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--tile must be auto, none or a tile side in pixels, got {spec!r}") from None
    if value < 8:
        raise ValueError(f"--tile must be at least 8 pixels, got {value}")
    return value
