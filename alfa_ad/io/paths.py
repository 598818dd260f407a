"""Default locations on disk."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ALFA_AD_CACHE`` (when set and non-empty) or ``./cache``: text embeddings and LLM replies."""
    return Path(os.environ.get("ALFA_AD_CACHE") or "cache")


def read_text_file(path: str | os.PathLike[str], where: str, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of ``path``; ``error`` with one line starting with ``where`` when it
    is missing, not UTF-8 or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: file not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{where}: cannot read ({e.strerror or e})") from None
