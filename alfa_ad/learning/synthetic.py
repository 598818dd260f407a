"""Synthetic defects made on normal images (the only anomalies prompt learning sees
besides text).  docs/method.md, "Learned prompts", describes them:

* ``cutpaste`` (CutPaste, Li et al., CVPR'21): a rectangle of the image, colour-jittered
  (per-channel gain in [0.5, 1.5] and offset in [-60, 60] grey levels), pasted at
  another place;
* ``noise``: a patch of one random colour plus Gaussian noise (sigma 25 grey levels),
  alpha-blended with alpha in [0.7, 1].

Each defect is a rectangle or an ellipse (even odds) whose sides are 8-25% of the
image's shorter side (aspect ratio in [1/2, 2]), placed uniformly inside the image.
The returned mask marks the changed pixels.  Everything is drawn from the
``numpy.random.Generator`` passed in, so a seed gives the same defects.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("cutpaste", "noise")


def _region(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int, np.ndarray]:
    """A random box ``(top, left, height, width)`` and its shape mask (rectangle or ellipse)."""
    side = min(h, w)
    area_side = rng.uniform(0.08, 0.25) * side
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    bh = int(np.clip(round(area_side * np.sqrt(aspect)), 2, h - 1))
    bw = int(np.clip(round(area_side / np.sqrt(aspect)), 2, w - 1))
    top = int(rng.integers(0, h - bh + 1))
    left = int(rng.integers(0, w - bw + 1))
    if rng.random() < 0.5:
        shape = np.ones((bh, bw), dtype=bool)
    else:
        im = Image.new("L", (bw, bh), 0)
        ImageDraw.Draw(im).ellipse((0, 0, bw - 1, bh - 1), fill=255)
        shape = np.asarray(im) > 0
    return top, left, bh, bw, shape


def synthetic_defect(image: Image.Image, rng: np.random.Generator, kind: str) -> tuple[Image.Image, np.ndarray]:
    """One defect of ``kind`` on a copy of ``image`` (RGB): ``(image, mask (H, W) bool)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic defect {kind!r}; choose from {', '.join(KINDS)}")
    arr = np.asarray(image.convert("RGB")).astype(np.float32)
    h, w = arr.shape[:2]
    if min(h, w) < 8:
        raise ValueError(f"image of {w}x{h} pixels is too small for synthetic defects")
    top, left, bh, bw, shape = _region(rng, h, w)
    if kind == "cutpaste":
        st = int(rng.integers(0, h - bh + 1))
        sl = int(rng.integers(0, w - bw + 1))
        patch = arr[st : st + bh, sl : sl + bw].copy()
        gain = rng.uniform(0.5, 1.5, 3).astype(np.float32)
        offset = rng.uniform(-60, 60, 3).astype(np.float32)
        patch = patch * gain + offset
        alpha = 1.0
    else:
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        patch = colour + rng.normal(0, 25, (bh, bw, 3)).astype(np.float32)
        alpha = float(rng.uniform(0.7, 1.0))
    region = arr[top : top + bh, left : left + bw]
    blended = (1 - alpha) * region + alpha * np.clip(patch, 0, 255)
    region[shape] = blended[shape]
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + bh, left : left + bw] = shape
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)), mask


def synthetic_defects(images: list[Image.Image], count: int, rng: np.random.Generator
                      ) -> tuple[list[Image.Image], list[np.ndarray], list[int]]:
    """``count`` defects made round-robin on ``images`` (defect ``i`` on image ``i mod k``;
    kinds alternate per round: cutpaste, noise, ...).  Returns the defect images, their
    masks and the index of the image each was made on."""
    out, masks, sources = [], [], []
    for i in range(count if images else 0):
        src = i % len(images)
        d, m = synthetic_defect(images[src], rng, KINDS[(i // len(images)) % len(KINDS)])
        out.append(d)
        masks.append(m)
        sources.append(src)
    return out, masks, sources
