"""Robust image and mask loading.

Every failure is reported as an :class:`ImageLoadError` (or :class:`InputError`
for folders) whose message is a single line ``"<source>: <reason>"``.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "ImageSource",
    "InputError",
    "iter_image_files",
    "load_image",
    "load_image_bytes",
    "load_mask",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 200_000_000

ImageSource = Union[str, os.PathLike[str], Image.Image, np.ndarray]

_ARRAY_SOURCE = "<numpy array>"
_PIL_SOURCE = "<PIL image>"
# Modes that Image.convert("RGB") cannot handle directly (or would warn about).
_RGB_VIA = {"La": "LA", "RGBa": "RGBA", "PA": "RGBA"}
# Errors Pillow raises for truncated or malformed data while decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, KeyError, TypeError, IndexError, struct.error)


def _one_line(text: object) -> str:
    """Collapse line breaks (and the whitespace around them) into single spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


class InputError(ValueError):
    """Unusable user input; ``str()`` is one line ``"<source>: <reason>"``."""

    def __init__(self, source: object, reason: str | None = None) -> None:
        self.source = _one_line(source)
        self.reason = _one_line(reason) if reason is not None else None
        message = self.source if self.reason is None else f"{self.source}: {self.reason}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        return (type(self), (self.source, self.reason))


class ImageLoadError(InputError):
    """An image or mask could not be loaded; ``str()`` is ``"<source>: <reason>"``."""


# --------------------------------------------------------------------------- checks


def _check_size(size: tuple[int, int], max_pixels: int, source: str) -> None:
    """Reject empty images and images with more than ``max_pixels`` pixels."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(source, f"empty image ({width}x{height})")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageLoadError(
            source, f"image too large ({width}x{height} = {pixels} pixels; limit {max_pixels})"
        )


def _describe_pil(image: Image.Image) -> str:
    """A short description of an in-memory PIL image for error messages."""
    filename = getattr(image, "filename", "")
    return str(filename) if filename else _PIL_SOURCE


# ------------------------------------------------------------------ value scaling


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats to uint8: data with max <= 1 is taken as [0, 1], otherwise as [0, 255]."""
    data = np.nan_to_num(values.astype(np.float64, copy=False), nan=0.0, posinf=255.0, neginf=0.0)
    if data.size and data.max() <= 1.0:
        data = data * 255.0
    return np.round(np.clip(data, 0.0, 255.0)).astype(np.uint8)


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale the full 16-bit range onto 8 bits (65535 -> 255)."""
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def _int32_to_uint8(values: np.ndarray) -> np.ndarray:
    """Mode "I" data: 16-bit content if it fits in [0, 65535], else the int32 range."""
    if values.size and values.min() >= 0 and values.max() <= 0xFFFF:
        return _uint16_to_uint8(values)
    scaled = np.clip(values.astype(np.float64), 0.0, None) * (255.0 / np.iinfo(np.int32).max)
    return np.round(scaled).astype(np.uint8)


def _array_to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Convert an array of a supported dtype to uint8 without min-max normalisation."""
    kind, itemsize = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return array.astype(np.uint8) * 255
    if kind == "u" and itemsize == 1:
        return array.astype(np.uint8, copy=False)
    if kind == "u" and itemsize == 2:
        return _uint16_to_uint8(array)
    if kind in "iu":
        return np.clip(array, 0, 255).astype(np.uint8)
    if kind == "f":
        return _float_to_uint8(array)
    raise ImageLoadError(source, f"unsupported array dtype {array.dtype}")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """Replicate an HxW uint8 array into an RGB image."""
    return Image.fromarray(np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2)))


# -------------------------------------------------------------- mode conversion


def _is_high_depth(mode: str) -> bool:
    return mode.startswith("I") or mode == "F"


def _to_rgb(image: Image.Image, source: str) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is dropped, grayscale replicated."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        return _gray_to_rgb(_uint16_to_uint8(np.asarray(image)))
    if mode == "I":
        return _gray_to_rgb(_int32_to_uint8(np.asarray(image)))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(image)))
    try:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        elif mode in _RGB_VIA:
            image = image.convert(_RGB_VIA[mode])
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(source, f"unsupported image mode {mode} ({exc})") from exc


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; always returns a new image. Bad EXIF is ignored."""
    try:
        rotated = ImageOps.exif_transpose(image)
    except _EXIF_ERRORS:
        rotated = None
    return rotated if rotated is not None else image.copy()


# --------------------------------------------------------------------- decoding


def _read_file(path: Path, max_pixels: int) -> Image.Image:
    """Open, size-check, fully decode and EXIF-orient an image file (any mode)."""
    source = str(path)
    if path.is_dir():
        raise ImageLoadError(source, "is a directory, not an image")
    return _decode(path, source, max_pixels)


def _decode(file: Path | io.BytesIO, source: str, max_pixels: int, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open, size-check (before decoding), fully decode and EXIF-orient a path or in-memory file.

    ``formats``: the Pillow formats tried (None: every format Pillow knows)."""
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's warning-level bomb check.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file, formats=formats) as image:
                _check_size(image.size, max_pixels, source)
                image.load()
                return _upright(image)
    except ImageLoadError:
        raise
    except FileNotFoundError as exc:
        raise ImageLoadError(source, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(source, "is a directory, not an image") from exc
    except PermissionError as exc:
        raise ImageLoadError(source, "permission denied") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(source, f"image too large ({exc})") from exc
    except UnidentifiedImageError as exc:
        accepted = f"; accepted: {', '.join(formats)}" if formats else ""
        raise ImageLoadError(source, f"not an image file (cannot identify image format{accepted})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(source, f"truncated or corrupt image data ({exc})") from exc


def _read_pil(image: Image.Image, max_pixels: int) -> Image.Image:
    """Size-check, decode (if lazy) and EXIF-orient an in-memory image; never mutates it."""
    source = _describe_pil(image)
    _check_size(image.size, max_pixels, source)
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(source, f"truncated or corrupt image data ({exc})") from exc
    return _upright(image)


def _array_to_image(array: np.ndarray, max_pixels: int) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 array (alpha dropped) to an RGB image."""
    shape = array.shape
    valid = array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))
    if not valid:
        raise ImageLoadError(
            _ARRAY_SOURCE,
            f"unsupported array shape {shape}; expected HxW, HxWx1, HxWx3 or HxWx4",
        )
    _check_size((shape[1], shape[0]), max_pixels, _ARRAY_SOURCE)
    if array.ndim == 3:
        array = array[..., 0] if shape[2] == 1 else array[..., :3]
    data = _array_to_uint8(array, _ARRAY_SOURCE)
    if data.ndim == 2:
        return _gray_to_rgb(data)
    return Image.fromarray(np.ascontiguousarray(data))


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``source`` (path, PIL image or numpy array) as a fully decoded, upright RGB image.

    Alpha is dropped (not composited), grayscale is replicated to three channels
    and 16/32-bit or float data is scaled by its type's range (never min-max).
    Raises :class:`ImageLoadError` with a one-line message on any failure.
    """
    if isinstance(source, np.ndarray):
        return _array_to_image(source, max_pixels)
    if isinstance(source, Image.Image):
        return _to_rgb(_read_pil(source, max_pixels), _describe_pil(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return _to_rgb(_read_file(path, max_pixels), str(path))
    raise ImageLoadError(
        f"<{type(source).__name__}>",
        "unsupported image source; expected a path, PIL image or numpy array",
    )


UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


def load_image_bytes(data: bytes, *, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                     formats: tuple[str, ...] | None = UPLOAD_FORMATS) -> Image.Image:
    """Like :func:`load_image` for an encoded image held in memory (an upload, say).

    The same checks as for a file: the pixel count is checked from the header before
    decoding (decompression bombs), and every failure is an :class:`ImageLoadError`
    ``"<source>: <reason>"``, ``source`` naming the upload.  Only ``formats`` are
    tried (by default the formats of :data:`IMAGE_EXTENSIONS`), so untrusted bytes never
    reach Pillow's rarer decoders.
    """
    if not data:
        raise ImageLoadError(source, "empty upload (0 bytes)")
    return _to_rgb(_decode(io.BytesIO(bytes(data)), source, max_pixels, formats), source)


def _mask_from_image(image: Image.Image, source: str) -> np.ndarray:
    """Foreground = any non-zero value (palette index for "P"; alpha ignored)."""
    mode = image.mode
    if mode == "1":
        return np.array(image, dtype=bool)
    if mode in ("P", "PA", "L", "LA", "La"):
        values = np.asarray(image)
        return (values[..., 0] if values.ndim == 3 else values) > 0
    if _is_high_depth(mode):
        return np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0) > 0
    return np.asarray(_to_rgb(image, source)).max(axis=2) > 0


def load_mask(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load a ground-truth mask as a bool HxW array (True where the pixel is non-zero).

    Masks must be stored losslessly (PNG/TIFF/BMP); for palette images the
    palette index is used, for colour images any non-zero colour channel.
    """
    file = Path(path)
    return _mask_from_image(_read_file(file, max_pixels), str(file))


def iter_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Sorted, non-hidden image files (by :data:`IMAGE_EXTENSIONS`) directly in ``folder``."""
    directory = Path(folder)
    if not directory.exists():
        raise InputError(str(directory), "folder not found")
    if not directory.is_dir():
        raise InputError(str(directory), "not a folder")
    try:
        entries = list(directory.iterdir())
    except PermissionError as exc:
        raise InputError(str(directory), "permission denied") from exc
    return sorted(
        entry
        for entry in entries
        if not entry.name.startswith(".")
        and entry.suffix.lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )
