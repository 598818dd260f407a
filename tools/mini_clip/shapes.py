"""Object silhouettes and their normal surface details on an ``S x S`` canvas.

Every shape is drawn in a local frame (centre ``0, 0``, size ``r``) that is
rotated by ``angle`` and moved to ``(cx, cy)``.  A shape is a boolean body mask
plus details: ``(mask, factor)`` pairs that multiply the object's colour
(grooves, threads, a capsule's second half), part of the *normal* appearance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw


@dataclass
class Frame:
    size: int  # canvas pixels
    cx: float
    cy: float
    r: float
    angle: float

    def to_canvas(self, pts) -> list[tuple[float, float]]:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return [(self.cx + x * c - y * s, self.cy + x * s + y * c) for x, y in pts]


@dataclass
class Shape:
    body: np.ndarray  # (S, S) bool
    details: list[tuple[np.ndarray, float]] = field(default_factory=list)


def draw(size: int, polygons=(), lines=(), discs=()) -> np.ndarray:
    """Boolean mask of filled ``polygons`` (canvas points), ``lines`` ``(points, width)``
    and ``discs`` ``(x, y, radius)``."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    for pts in polygons:
        d.polygon([tuple(p) for p in pts], fill=255)
    for pts, width in lines:
        d.line([tuple(p) for p in pts], fill=255, width=max(1, int(round(width))), joint="curve")
    for x, y, rad in discs:
        d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
    return np.asarray(im) > 127


def ellipse_pts(rx: float, ry: float, x0: float = 0.0, y0: float = 0.0, n: int = 48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(x0 + rx * np.cos(t), y0 + ry * np.sin(t)))


def rect_pts(w: float, h: float, x0: float = 0.0, y0: float = 0.0):
    return [(x0 - w / 2, y0 - h / 2), (x0 + w / 2, y0 - h / 2), (x0 + w / 2, y0 + h / 2), (x0 - w / 2, y0 + h / 2)]


def stadium_pts(length: float, width: float, n: int = 16):
    """A capsule outline along x: half-discs at both ends."""
    rad, half = width / 2, length / 2 - width / 2
    right = [(half + rad * np.cos(t), rad * np.sin(t)) for t in np.linspace(-np.pi / 2, np.pi / 2, n)]
    left = [(-half + rad * np.cos(t), rad * np.sin(t)) for t in np.linspace(np.pi / 2, 3 * np.pi / 2, n)]
    return right + left


def _holes(f: Frame, centres, rad):
    return draw(f.size, [f.to_canvas(ellipse_pts(rad, rad, x, y)) for x, y in centres])


def washer(f: Frame, rng) -> Shape:
    r = f.r
    body = draw(f.size, [f.to_canvas(ellipse_pts(r, r))]) & ~_holes(f, [(0, 0)], 0.45 * r)
    ring = draw(f.size, [f.to_canvas(ellipse_pts(0.62 * r, 0.62 * r))]) & body
    return Shape(body, [(ring, 0.9)])


def metal_nut(f: Frame, rng) -> Shape:
    r = f.r
    hexagon = [(r * np.cos(t), r * np.sin(t)) for t in np.arange(6) * np.pi / 3]
    body = draw(f.size, [f.to_canvas(hexagon)]) & ~_holes(f, [(0, 0)], 0.42 * r)
    inner = draw(f.size, [f.to_canvas(ellipse_pts(0.55 * r, 0.55 * r))]) & body
    return Shape(body, [(inner, 0.8)])


def gear(f: Frame, rng) -> Shape:
    r = f.r
    teeth = int(rng.integers(8, 13))
    polys = [f.to_canvas(ellipse_pts(0.78 * r, 0.78 * r))]
    for k in range(teeth):
        t = 2 * np.pi * k / teeth
        c, s = np.cos(t), np.sin(t)
        tooth = [(0.7 * r * c - 0.1 * r * s * sgn_w, 0.7 * r * s + 0.1 * r * c * sgn_w) for sgn_w in (-1, 1)]
        tooth += [(r * c - 0.08 * r * s * sgn_w, r * s + 0.08 * r * c * sgn_w) for sgn_w in (1, -1)]
        polys.append(f.to_canvas(tooth))
    body = draw(f.size, polys) & ~_holes(f, [(0, 0)], 0.22 * r)
    hub = draw(f.size, [f.to_canvas(ellipse_pts(0.4 * r, 0.4 * r))]) & body
    return Shape(body, [(hub, 1.12)])


def bracket(f: Frame, rng) -> Shape:
    r = f.r
    w = 0.5 * r
    pts = [(-r, -r), (-r + w, -r), (-r + w, r - w), (r, r - w), (r, r), (-r, r)]
    holes = _holes(f, [(-r + w / 2, -0.45 * r), (0.45 * r, r - w / 2)], 0.11 * r)
    body = draw(f.size, [f.to_canvas(pts)]) & ~holes
    bend = draw(f.size, lines=[(f.to_canvas([(-r + w, r - w), (-r, r)]), 0.06 * r)]) & body
    return Shape(body, [(bend, 0.75)])


def capsule(f: Frame, rng) -> Shape:
    r = f.r
    body = draw(f.size, [f.to_canvas(stadium_pts(2 * r, 0.8 * r))])
    half = draw(f.size, [f.to_canvas(rect_pts(r, 0.9 * r, x0=r / 2))]) & body
    return Shape(body, [(half, float(rng.choice([0.55, 1.35])))])


def pill(f: Frame, rng) -> Shape:
    r = f.r
    body = draw(f.size, [f.to_canvas(ellipse_pts(r, 0.62 * r))])
    groove = draw(f.size, lines=[(f.to_canvas([(0, -0.55 * r), (0, 0.55 * r)]), 0.05 * r)]) & body
    return Shape(body, [(groove, 0.7)])


def screw(f: Frame, rng) -> Shape:
    r = f.r
    head = f.to_canvas(ellipse_pts(0.32 * r, 0.32 * r, x0=-0.7 * r))
    shaft = f.to_canvas([(-0.7 * r, -0.13 * r), (0.85 * r, -0.13 * r), (r, 0), (0.85 * r, 0.13 * r),
                         (-0.7 * r, 0.13 * r)])
    body = draw(f.size, [head, shaft])
    threads = [(f.to_canvas([(x, -0.13 * r), (x + 0.06 * r, 0.13 * r)]), 0.03 * r)
               for x in np.arange(-0.3 * r, 0.85 * r, 0.12 * r)]
    slot = [(f.to_canvas([(-0.7 * r, -0.22 * r), (-0.7 * r, 0.22 * r)]), 0.07 * r)]
    return Shape(body, [(draw(f.size, lines=threads) & body, 0.72), (draw(f.size, lines=slot) & body, 0.5)])


def plate(f: Frame, rng) -> Shape:
    r = f.r
    w, h, c = 1.8 * r, 1.35 * r, 0.2 * r
    pts = [(-w / 2 + c, -h / 2), (w / 2 - c, -h / 2), (w / 2, -h / 2 + c), (w / 2, h / 2 - c), (w / 2 - c, h / 2),
           (-w / 2 + c, h / 2), (-w / 2, h / 2 - c), (-w / 2, -h / 2 + c)]
    corners = [(sx * (w / 2 - 0.22 * r), sy * (h / 2 - 0.22 * r)) for sx in (-1, 1) for sy in (-1, 1)]
    body = draw(f.size, [f.to_canvas(pts)]) & ~_holes(f, corners, 0.09 * r)
    panel = draw(f.size, [f.to_canvas(rect_pts(0.9 * r, 0.55 * r))]) & body
    return Shape(body, [(panel, 0.88)])


SHAPES = {"metal_nut": metal_nut, "capsule": capsule, "pill": pill, "screw": screw, "washer": washer, "gear": gear,
          "bracket": bracket, "plate": plate}
