"""Defects drawn onto a rendered object.

``apply(kind, layer, rng)`` changes the object's colours and/or its body mask in
place and returns the ground-truth mask: the pixels the defect changed (thin
defects dilated by about one output pixel, as hand-drawn masks are).  Sizes are
relative to the object's size ``r``; ``u`` is canvas pixels per output pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .shapes import Frame, draw, ellipse_pts


@dataclass
class Layer:
    """An object being rendered: colours (S, S, 3) float32 and body mask (S, S) bool."""

    colour: np.ndarray
    body: np.ndarray
    frame: Frame
    u: float


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Square dilation by ``radius`` canvas pixels (a box blur is non-zero exactly there)."""
    r = max(1, int(round(radius)))
    im = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.BoxBlur(r))
    return np.asarray(im) > 0


def erode(mask: np.ndarray, radius: float) -> np.ndarray:
    return ~dilate(~mask, radius)


def _inside(layer: Layer, rng, margin: float) -> tuple[float, float]:
    """A random point of the body at least ``margin`` canvas pixels from its edge."""
    core = erode(layer.body, margin) if margin >= 1 else layer.body
    ys, xs = np.nonzero(core if core.any() else layer.body)
    i = int(rng.integers(len(xs)))
    return float(xs[i]), float(ys[i])


def _edge(layer: Layer, rng) -> tuple[float, float, float, float]:
    """A point on the object's outer edge and the outward direction ``(x, y, dx, dy)``."""
    f = layer.frame
    for _ in range(50):
        phi = rng.uniform(0, 2 * np.pi)
        dx, dy = np.cos(phi), np.sin(phi)
        for t in np.arange(1.4 * f.r, 0, -layer.u / 2):
            x, y = int(round(f.cx + t * dx)), int(round(f.cy + t * dy))
            if 0 <= x < f.size and 0 <= y < f.size and layer.body[y, x]:
                return float(x), float(y), dx, dy
    x, y = _inside(layer, rng, 0)
    return x, y, 0.0, -1.0


def _tone(colour: np.ndarray, lighter: bool, amount: float) -> np.ndarray:
    target = 255.0 if lighter else 0.0
    return colour * (1 - amount) + target * amount


def _paint(layer: Layer, region: np.ndarray, colour, alpha=1.0) -> None:
    """Blend ``colour`` ((3,) or (S, S, 3)) over ``region`` with opacity ``alpha`` (scalar or (S, S))."""
    a = (region.astype(np.float32) * np.asarray(alpha, dtype=np.float32))[..., None]
    layer.colour[:] = layer.colour * (1 - a) + np.asarray(colour, dtype=np.float32) * a


def scratch(layer: Layer, rng) -> np.ndarray:
    f, u = layer.frame, layer.u
    x, y = _inside(layer, rng, 2 * u)
    length, phi = f.r * rng.uniform(0.6, 1.2), rng.uniform(0, np.pi)
    bow = rng.uniform(-0.15, 0.15) * length
    t = np.linspace(-0.5, 0.5, 12)
    px = x + t * length * np.cos(phi) - (1 - 4 * t * t) * bow * np.sin(phi)
    py = y + t * length * np.sin(phi) + (1 - 4 * t * t) * bow * np.cos(phi)
    line = draw(f.size, lines=[(list(zip(px, py)), u * rng.uniform(1.8, 3.2))]) & layer.body
    mean = layer.colour[layer.body].mean(0)
    _paint(layer, line, _tone(layer.colour, mean.mean() < 150 or rng.random() < 0.4, 0.8))
    return dilate(line, u) & layer.body


def hole(layer: Layer, rng) -> np.ndarray:
    f, u = layer.frame, layer.u
    rad = f.r * rng.uniform(0.14, 0.28)
    x, y = _inside(layer, rng, rad * 0.8)
    rim = draw(f.size, discs=[(x, y, rad + 2 * u)]) & layer.body
    _paint(layer, rim, _tone(layer.colour, False, 0.55))
    gt = rim.copy()
    layer.body &= ~draw(f.size, discs=[(x, y, rad)])
    return gt


def stain(layer: Layer, rng) -> np.ndarray:
    f, u = layer.frame, layer.u
    rad = f.r * rng.uniform(0.2, 0.4)
    x, y = _inside(layer, rng, rad * 0.3)
    blobs = [f_.to_canvas(ellipse_pts(rad * rng.uniform(0.4, 1.0), rad * rng.uniform(0.3, 0.8)))
             for f_ in [Frame(f.size, x + rng.normal(0, rad * 0.4), y + rng.normal(0, rad * 0.4), 1, rng.uniform(0, 3.2))
                        for _ in range(int(rng.integers(3, 7)))]]
    blob = np.asarray(Image.fromarray(draw(f.size, blobs).astype(np.uint8) * 255)
                      .filter(ImageFilter.GaussianBlur(1.5 * u)), dtype=np.float32) / 255.0
    colours = np.array([(105, 65, 30), (45, 40, 35), (150, 75, 30), (185, 165, 75)], dtype=np.float32)
    mean = layer.colour[layer.body].mean(0)
    c = colours[np.argsort(-np.abs(colours - mean).sum(1))[int(rng.integers(2))]]
    _paint(layer, layer.body, c, blob * rng.uniform(0.7, 0.9))
    return (blob > 0.4) & layer.body


def crack(layer: Layer, rng) -> np.ndarray:
    f, u = layer.frame, layer.u
    x, y = _inside(layer, rng, 2 * u)
    lines = []
    for _branch in range(int(rng.integers(1, 3))):
        phi, px, py = rng.uniform(0, 2 * np.pi), x, y
        pts = [(px, py)]
        for _ in range(int(rng.integers(5, 11))):
            phi += rng.normal(0, 0.6)
            step = f.r * rng.uniform(0.08, 0.15)
            px, py = px + step * np.cos(phi), py + step * np.sin(phi)
            pts.append((px, py))
        lines.append((pts, u * rng.uniform(1.5, 2.5)))
    mask = draw(f.size, lines=lines) & layer.body
    _paint(layer, mask, _tone(layer.colour, False, 0.9))
    return dilate(mask, u) & layer.body


def missing(layer: Layer, rng) -> np.ndarray:
    f, u = layer.frame, layer.u
    x, y, dx, dy = _edge(layer, rng)
    rad = f.r * rng.uniform(0.3, 0.5)
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rad * rng.uniform(0.6, 1.0, n)
    cx, cy = x + 0.3 * rad * dx, y + 0.3 * rad * dy
    poly = draw(f.size, [list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))])
    gt = poly & layer.body
    layer.body &= ~poly
    edge = dilate(gt, 1.2 * u) & layer.body  # the broken edge is darker
    _paint(layer, edge, _tone(layer.colour, False, 0.35))
    return gt | edge


def bent(layer: Layer, rng) -> np.ndarray:
    f = layer.frame
    x, y, dx, dy = _edge(layer, rng)
    rad = f.r * rng.uniform(0.35, 0.55)
    region = draw(f.size, discs=[(x, y, rad)]) & layer.body
    hx, hy = x - 0.7 * rad * dx, y - 0.7 * rad * dy
    angle = float(rng.choice([-1, 1]) * rng.uniform(20, 40))
    rgba = np.concatenate([np.clip(layer.colour, 0, 255), region[..., None] * 255.0], -1).astype(np.uint8)
    moved = np.asarray(Image.fromarray(rgba, "RGBA").rotate(angle, Image.BILINEAR, center=(hx, hy)), dtype=np.float32)
    new = moved[..., 3] > 127
    layer.body &= ~region
    shade = rng.choice([0.6, 1.4])
    layer.colour[new] = np.clip(moved[..., :3][new] * shade, 0, 255)
    layer.body |= new
    return region | new


def contamination(layer: Layer, rng) -> np.ndarray:
    f, u = layer.frame, layer.u
    rad = f.r * rng.uniform(0.2, 0.35)
    x, y = _inside(layer, rng, 0)
    discs, lines = [], []
    for _ in range(int(rng.integers(10, 31))):
        px, py = x + rng.normal(0, rad / 2), y + rng.normal(0, rad / 2)
        if rng.random() < 0.7:
            discs.append((px, py, u * rng.uniform(1.0, 2.5)))
        else:
            phi, ln = rng.uniform(0, np.pi), u * rng.uniform(3, 6)
            lines.append(([(px, py), (px + ln * np.cos(phi), py + ln * np.sin(phi))], 1.5 * u))
    specks = draw(f.size, lines=lines, discs=discs) & layer.body
    colours = np.array([(20, 20, 20), (90, 55, 25), (245, 245, 240), (40, 110, 40)], dtype=np.float32)
    mean = layer.colour[layer.body].mean(0)
    _paint(layer, specks, colours[int(np.argmax(np.abs(colours - mean).sum(1)))])
    return dilate(specks, u) & layer.body


DEFECT_FUNCS = {"scratch": scratch, "hole": hole, "stain": stain, "crack": crack, "missing": missing, "bent": bent,
                "contamination": contamination}


def apply(kind: str, layer: Layer, rng) -> np.ndarray:
    return DEFECT_FUNCS[kind](layer, rng)
