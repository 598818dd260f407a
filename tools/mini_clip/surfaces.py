"""Texture classes: a surface filling the frame (carpet, grid, leather, tile, wood), with defects.

As in MVTec AD, a texture image has no object and no background: the material fills the
frame.  Two random streams make a surface: ``params`` (period, orientation, thread and
grain widths, colour shifts: one look) and ``noise`` (phase, fibres, speckles: one
sample of that look).  A benchmark class keeps ``params`` fixed (``Scene.bg_seed``) and
draws ``noise`` per image, so its images are different pieces of one material.

Defects reuse :mod:`.defects` on a layer whose body is the whole frame (a hole shows the
dark backing), plus two texture defects: ``thread`` (a stray fibre lying on the surface)
and ``colour`` (a discoloured patch that keeps the texture).  Sizes are in pixels of a
64 px view times ``u`` (canvas pixels per output pixel), as everywhere in the generator.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from . import defects as D
from .shapes import Frame, draw
from .textures import _coords, _lowfreq

MIN_DEFECT_FRACTION = 0.002


def _tint(colour: np.ndarray, params: np.random.Generator) -> np.ndarray:
    """The named colour, muted towards grey (materials are less saturated than paint)."""
    grey = np.full(3, 128.0, dtype=np.float32)
    return (np.asarray(colour, np.float32) * 0.6 + grey * 0.4) * params.uniform(0.85, 1.1)


def _fine(size: int, u: float, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Noise at the output-pixel scale (one value per output pixel, upsampled)."""
    n = max(1, int(round(size / u)))
    grid = rng.normal(0, sigma, (n, n)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def carpet(size, u, c, params, noise):
    """A weave: warp and weft threads crossing over and under (periodic), with fibre noise."""
    x, y = _coords(size, params.uniform(-0.2, 0.2))
    p = params.uniform(3.5, 6.0) * u
    x, y = x + noise.uniform(0, p), y + noise.uniform(0, p)
    over = (np.floor(x / p) + np.floor(y / p)) % 2 == 0
    across = np.where(over, (y % p) / p, (x % p) / p)
    profile = np.sin(np.pi * across) ** 0.7
    c2 = c * params.uniform(0.75, 0.95)
    img = np.where(over[..., None], c, c2) * (0.55 + 0.6 * profile)[..., None]
    return img + (_fine(size, u, noise, 10) + 6 * _lowfreq(size, 6, noise))[..., None]


def grid(size, u, c, params, noise):
    """A wire mesh: bright wires on a dark backing (periodic), with a slight waviness."""
    x, y = _coords(size, params.uniform(-0.3, 0.3))
    p = params.uniform(6.0, 10.0) * u
    w = p * params.uniform(0.12, 0.2)
    x = x + noise.uniform(0, p) + 0.6 * u * _lowfreq(size, 4, noise)
    y = y + noise.uniform(0, p) + 0.6 * u * _lowfreq(size, 4, noise)
    dx, dy = np.abs((x % p) - p / 2), np.abs((y % p) - p / 2)
    wire = np.clip(1.2 - np.minimum(dx, dy) / w, 0, 1)
    shade = 0.75 + 0.35 * np.cos(np.pi * np.minimum(dx, dy) / (2 * w)).clip(0, 1)
    img = c * 0.22 + (c * shade[..., None] * 1.15 - c * 0.22) * wire[..., None]
    return img + _fine(size, u, noise, 5)[..., None]


def leather(size, u, c, params, noise):
    """Grain and creases (stochastic): several scales of smooth noise, dark crease lines."""
    cells = int(params.integers(10, 18))
    crease = np.abs(_lowfreq(size, cells, noise)) < params.uniform(0.05, 0.09)
    crease = np.asarray(Image.fromarray(crease.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(0.7 * u)),
                        dtype=np.float32) / 255.0
    tone = 8 * _lowfreq(size, 5, noise) + 6 * _lowfreq(size, 20, noise) + _fine(size, u, noise, 7)
    return c * (1 - 0.35 * crease)[..., None] + tone[..., None]


def tile(size, u, c, params, noise):
    """Mottled stone with speckles of two other colours (stochastic), like terrazzo."""
    img = c + (14 * _lowfreq(size, 8, noise) + 8 * _lowfreq(size, 24, noise) + _fine(size, u, noise, 5))[..., None]
    for tone, density in ((params.uniform(0.45, 0.7), params.uniform(0.5, 1.2)),
                          (params.uniform(1.2, 1.45), params.uniform(0.3, 0.9))):
        n = int(density * (size / u) ** 2 / 40)
        discs = [(float(a), float(b), u * float(r)) for a, b, r in
                 zip(noise.uniform(0, size, n), noise.uniform(0, size, n), noise.uniform(0.5, 1.4, n))]
        spots = draw(size, discs=discs)
        img[spots] = np.clip(c * tone, 0, 255)
    return img


def wood(size, u, c, params, noise):
    """Growth rings and fibre streaks along the grain (periodic with a warp)."""
    x, y = _coords(size, params.uniform(0, np.pi))
    period = params.uniform(3.0, 7.0) * u
    warp = _lowfreq(size, 4, noise) * params.uniform(2, 5) + 0.4 * _lowfreq(size, 16, noise)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (x + noise.uniform(0, 100) * u) / period + warp)
    n = int(size / u) + 2  # fibres: one value per output pixel across the grain, slowly varying along it
    fibre = np.interp((x / u).ravel() % n, np.arange(n), noise.normal(0, 1, n)).reshape(size, size)
    streak = (fibre * (1 + 0.5 * _lowfreq(size, 3, noise))).astype(np.float32)
    dark = c * params.uniform(0.55, 0.75)
    return c + (dark - c) * (t ** 1.5)[..., None] + (5 * streak)[..., None]


SURFACES = {"carpet": carpet, "grid": grid, "leather": leather, "tile": tile, "wood": wood}


def thread(layer: D.Layer, rng) -> np.ndarray:
    """A stray fibre on the surface: a thin curving line of a contrasting colour."""
    f, u = layer.frame, layer.u
    x, y = D._inside(layer, rng, 2 * u)
    phi, pts = rng.uniform(0, 2 * np.pi), [(x, y)]
    for _ in range(int(rng.integers(8, 14))):
        phi += rng.normal(0, 0.35)
        step = f.r * rng.uniform(0.1, 0.16)
        x, y = x + step * np.cos(phi), y + step * np.sin(phi)
        pts.append((x, y))
    line = draw(f.size, lines=[(pts, u * rng.uniform(1.2, 2.0))]) & layer.body
    mean = layer.colour[layer.body].mean(0)
    colours = np.array([(25, 25, 25), (240, 240, 235), (200, 40, 35), (40, 80, 200)], dtype=np.float32)
    D._paint(layer, line, colours[int(np.argmax(np.abs(colours - mean).sum(1)))], 0.9)
    return D.dilate(line, u) & layer.body


def colour(layer: D.Layer, rng) -> np.ndarray:
    """A discoloured patch: the texture kept, its colour shifted in a soft-edged blob."""
    f, u = layer.frame, layer.u
    rad = f.r * rng.uniform(0.25, 0.45)
    x, y = D._inside(layer, rng, rad * 0.3)
    blob = draw(f.size, discs=[(x + rng.normal(0, rad * 0.3), y + rng.normal(0, rad * 0.3), rad * rng.uniform(0.5, 1.0))
                               for _ in range(int(rng.integers(2, 5)))])
    alpha = np.asarray(Image.fromarray(blob.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1.5 * u)),
                       dtype=np.float32) / 255.0
    factor = rng.uniform(0.45, 1.6, 3).astype(np.float32)
    factor[int(rng.integers(3))] = rng.choice([0.4, 1.7])  # at least one channel clearly off
    D._paint(layer, layer.body, np.clip(layer.colour * factor, 0, 255), alpha * 0.9)
    return (alpha > 0.4) & layer.body


TEXTURE_DEFECT_FUNCS = {**{k: v for k, v in D.DEFECT_FUNCS.items() if k not in ("missing", "bent")},
                        "thread": thread, "colour": colour}


def render_texture_variants(scene, defects, size: int, supersample: int, model_px: int):
    """``[(image uint8, mask bool)]`` of a texture scene, one per entry of ``defects``."""
    from .scenes import _finish
    from .vocab import COLOURS

    big = size * supersample
    zoom = 1.4 if scene.style == "close-up" else 1.0
    u = big / model_px
    params = np.random.default_rng([scene.seed if scene.bg_seed is None else scene.bg_seed, 5])
    noise = np.random.default_rng([scene.seed, 6])
    surface = SURFACES[scene.kind](big, u * zoom, _tint(COLOURS[scene.colour], params), params, noise)
    surface = np.clip(surface, 0, 255).astype(np.float32)
    backing = np.full(3, 18.0, dtype=np.float32)
    frame = Frame(big, scene.cx * big, scene.cy * big, scene.r * big, scene.angle)
    out = []
    for defect in defects:
        layer, gt = D.Layer(surface, np.ones((big, big), bool), frame, u), np.zeros((big, big), dtype=bool)
        if defect is not None:
            rng = np.random.default_rng([scene.seed, 3])
            for _attempt in range(20):
                layer = D.Layer(surface.copy(), np.ones((big, big), bool), frame, u)
                gt = TEXTURE_DEFECT_FUNCS[defect](layer, rng)
                if gt.mean() >= MIN_DEFECT_FRACTION:
                    break
        img = np.where(layer.body[..., None], layer.colour, backing)
        out.append(_finish(scene.style, img, gt, size))
    return out
