"""Default locations on disk."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ALFA_AD_CACHE`` (when set and non-empty) or ``./cache``: text embeddings and LLM replies."""
    return Path(os.environ.get("ALFA_AD_CACHE") or "cache")
