"""Synthetic demo data: textured parts, some with painted red spots, in MVTec layout.

The repository ships no third-party images; the demo makes its own so that
``alfa-ad demo`` runs anywhere, offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .io.atomic import atomic_save_image

DEMO_CLASS = "widget"


def _texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 25 * np.sin(xx / rng.uniform(6, 12)) * np.cos(yy / rng.uniform(6, 12))
    noise = rng.normal(0, 6, (h, w))
    tint = np.array([1.0, 0.97, 0.9])
    img = (base + noise)[..., None] * tint
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic_dataset(root: str | Path, n_good: int = 4, n_defect: int = 6, seed: int = 0,
                           size: tuple[int, int] = (320, 240)) -> Path:
    """Write ``root/widget/{test/good, test/spot, ground_truth/spot}``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    cls = root / DEMO_CLASS
    for i in range(n_good):
        atomic_save_image(cls / "test" / "good" / f"{i:03d}.png", Image.fromarray(_texture(rng, size)))
    w, h = size
    for i in range(n_defect):
        img = Image.fromarray(_texture(rng, size))
        mask = Image.new("L", size, 0)
        rx, ry = rng.integers(10, 28, 2)
        cx, cy = rng.integers(rx + 5, w - rx - 5), rng.integers(ry + 5, h - ry - 5)
        box = (int(cx - rx), int(cy - ry), int(cx + rx), int(cy + ry))
        ImageDraw.Draw(img).ellipse(box, fill=(200, 40, 35))
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        atomic_save_image(cls / "test" / "spot" / f"{i:03d}.png", img)
        atomic_save_image(cls / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root
