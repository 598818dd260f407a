"""Background textures on an ``S x S`` canvas (float32 RGB in 0..255).

``u`` is the canvas pixels per output pixel (rendering is supersampled, then
downsampled), so every size below is in output pixels times ``u``.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation background colour."""
    h, s, v = rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.85)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _second(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shift = rng.uniform(0.15, 0.3) * 255 * rng.choice([-1, 1])
    out = c + shift
    if out.min() < 0 or out.max() > 255:  # go the other way
        out = c - shift
    return np.clip(out, 0, 255)


def _coords(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _lowfreq(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [-1, 1]: a ``cells x cells`` random grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def background(kind: str, size: int, u: float, rng: np.random.Generator) -> np.ndarray:
    """``(size, size, 3)`` float32 texture of ``kind`` (see ``vocab.BACKGROUNDS``)."""
    c1 = muted_colour(rng)
    c2 = _second(c1, rng)
    angle = rng.uniform(0, np.pi)
    if kind == "plain":
        img = np.broadcast_to(c1, (size, size, 3)).copy()
        img += (_lowfreq(size, 4, rng) * 8)[..., None]
    elif kind == "striped":
        x, _ = _coords(size, angle)
        period = rng.uniform(6, 16) * u
        on = (x / period) % 1.0 < rng.uniform(0.35, 0.65)
        img = np.where(on[..., None], c2, c1)
    elif kind == "checkered":
        x, y = _coords(size, angle if rng.random() < 0.5 else 0.0)
        cell = rng.uniform(6, 14) * u
        on = (np.floor(x / cell) + np.floor(y / cell)) % 2 == 1
        img = np.where(on[..., None], c2, c1)
    elif kind == "noisy":
        n = int(round(size / u))
        noise = rng.normal(0, rng.uniform(12, 30), (n, n, 1)).astype(np.float32)
        noise = np.repeat(np.repeat(noise, int(np.ceil(size / n)), 0), int(np.ceil(size / n)), 1)[:size, :size]
        img = c1 + noise
    elif kind == "wooden":
        x, y = _coords(size, angle)
        period = rng.uniform(5, 12) * u
        warp = _lowfreq(size, 5, rng) * rng.uniform(2, 5)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * x / period + warp + 0.3 * _lowfreq(size, 24, rng))
        img = c1 + (c2 - c1) * (t**2)[..., None]
    elif kind == "dotted":
        x, y = _coords(size, angle)
        gap = rng.uniform(8, 16) * u
        rad = gap * rng.uniform(0.18, 0.32)
        dx, dy = (x % gap) - gap / 2, (y % gap) - gap / 2
        on = dx * dx + dy * dy < rad * rad
        img = np.where(on[..., None], c2, c1)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.clip(img, 0, 255).astype(np.float32)
