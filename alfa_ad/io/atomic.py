"""Atomic file writes: write a temp file next to the target, fsync, then ``os.replace``.

A reader never sees a half-written file, and if writing fails the previous
file at the target path (if any) is left untouched and no temp file remains.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from PIL import Image

__all__ = ["atomic_save_image", "atomic_write_bytes", "atomic_write_text"]

_FALLBACK_MODE = 0o644


def _process_umask() -> int | None:
    """The current umask read from /proc (Linux) without changing it, else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _target_mode(target: Path) -> int:
    """Permission bits for the new file: keep the old file's, else honour the umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = _process_umask()
        return _FALLBACK_MODE if umask is None else 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write`` on a temp file in the target's folder, then atomically replace the target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(target)
    handle = tempfile.NamedTemporaryFile(
        delete=False, dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    temp_path = Path(handle.name)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (parent folders are created)."""
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` to ``path`` as UTF-8 (newlines are written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(
    path: str | os.PathLike[str], image: Image.Image, format: str = "PNG", **params: Any
) -> Path:
    """Atomically save ``image`` to ``path`` in ``format``; ``params`` go to ``Image.save``."""
    return _atomic_write(path, lambda handle: image.save(handle, format=format, **params))
