"""Aspect-preserving tiling: which square tiles to score, and how to stitch their maps.

Pure geometry and blending (no model, no I/O).  Rules (docs/method.md, "Tiling"):

* ``none``: the whole image is resized to the model input (it is squashed when its
  aspect ratio is not the model's, and shrunk when it is large).
* ``auto``: tile when squashing would distort the image by more than
  :data:`MAX_ASPECT` (longer / shorter side) or shrink it by more than
  :data:`MAX_DOWNSCALE` (shorter side / model input side); the tile side is then
  ``min(shorter side, TILE_DOWNSCALE * model side)``.  The limits leave the usual
  benchmarks (MVTec AD up to 1024 px, VisA up to ~1562 x 960) scored whole, as the
  papers do.  The cost is bounded whatever the image's shape:

  - a **thin strip** (shorter side below the model side, where square tiles would be
    upscaled) is cut along its length into at most :data:`STRIP_TILES` rectangular
    pieces of its full width, each squashed into the model input as ``none`` squashes
    a whole image: a 4000 x 60 line scan costs two model inputs, not ninety;
  - any other image uses at most :data:`MAX_TILES` tiles: when the natural side
    would need more, the side grows until the plan fits (a 2048 x 2048 image: 16
    tiles of 646 px instead of 36 of 480); an image too long for that gets
    full-width pieces squashed by at most :data:`MAX_ASPECT` (4000 x 300: 9 pieces,
    not 18 squares).
* an integer ``SIZE``: square tiles of ``min(SIZE, shorter side)`` source pixels (as
  asked: no bound).

Tiles cover the image, and neighbours overlap by at least :data:`MIN_OVERLAP` of a
tile; their start positions are spread evenly.
Stitching is a weighted mean: each tile's map is weighted by a separable tent that
is 1 at the tile centre and falls linearly towards its edges (floored at
:data:`EDGE_WEIGHT`), so every pixel is dominated by the tile in which it lies most
centrally, and a pixel covered by one tile takes that tile's value exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tile_spec import parse_tile  # noqa: F401  (its torch-free home; imported from here too)

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)

MAX_ASPECT = 2.0
MAX_DOWNSCALE = 4.5
TILE_DOWNSCALE = 2.0
MIN_OVERLAP = 0.25
EDGE_WEIGHT = 0.05
MAX_TILES = 16  # auto: square tiles per image at most
STRIP_TILES = 2  # auto: pieces of a strip thinner than the model input


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile * (1.0 - overlap))) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _grid(height: int, width: int, side: int, overlap: float) -> list[Box]:
    return [(t, l, t + side, l + side) for t in _starts(height, side, overlap) for l in _starts(width, side, overlap)]


def _strip(height: int, width: int, pieces: int, overlap: float) -> list[Box]:
    """``pieces`` full-width pieces along the longer side, overlapping by ``overlap``."""
    long = max(height, width)
    length = min(long, math.ceil(long / (pieces - (pieces - 1) * overlap)))
    if height >= width:
        return [(t, 0, t + length, width) for t in _starts(height, length, overlap)]
    return [(0, l, height, l + length) for l in _starts(width, length, overlap)]


def plan_tiles(height: int, width: int, model_side: int, mode: str | int = "auto",
               overlap: float = MIN_OVERLAP) -> list[Box] | None:
    """Tile boxes for an image of ``height x width``; ``None`` means "score it whole"."""
    mode = parse_tile(mode)
    short, long = min(height, width), max(height, width)
    if mode == "none":
        return None
    if mode != "auto":
        side = min(int(mode), short)
        if side >= long:  # one tile would be the whole (square) image
            return None
        return _grid(height, width, side, overlap)
    if long / short <= MAX_ASPECT and short / model_side <= MAX_DOWNSCALE:
        return None
    if short < model_side:  # a thin strip: a few squashed pieces, not many upscaled squares
        return _strip(height, width, STRIP_TILES, overlap)
    side = min(short, round(TILE_DOWNSCALE * model_side))
    boxes = _grid(height, width, side, overlap)
    while len(boxes) > MAX_TILES and side < short:  # a large image: bigger tiles, not more
        side = min(short, math.ceil(side * 1.05))
        boxes = _grid(height, width, side, overlap)
    if len(boxes) > MAX_TILES:  # long and narrow: full-width pieces squashed by at most MAX_ASPECT
        pieces = 2
        while pieces < MAX_TILES and math.ceil(long / (pieces - (pieces - 1) * overlap)) > MAX_ASPECT * short:
            pieces += 1
        return _strip(height, width, pieces, overlap)
    return boxes


def tent(height: int, width: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(height, width)`` blend weights (square when ``width`` is None): 1 at the centre,
    linear to :data:`EDGE_WEIGHT` at the edges, separably along each axis."""

    def ramp(n: int) -> torch.Tensor:
        pos = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n  # (0, 1)
        return (1.0 - (2.0 * pos - 1.0).abs()).clamp_min(EDGE_WEIGHT)

    return ramp(height)[:, None] * ramp(height if width is None else width)[None, :]


def stitch(maps: torch.Tensor, boxes: list[Box], size: tuple[int, int]) -> torch.Tensor:
    """Blend per-tile maps ``(n, h, w)`` (any resolution) into one ``(H, W)`` map.

    Each tile map is resized bilinearly to its box and added with :func:`tent`
    weights; the sum is divided by the sum of weights.
    """
    height, width = size
    acc = torch.zeros(height, width, device=maps.device, dtype=torch.float32)
    norm = torch.zeros_like(acc)
    for m, (top, left, bottom, right) in zip(maps, boxes):
        h, w = bottom - top, right - left
        tile = F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        wt = tent(h, w, maps.device)
        acc[top:bottom, left:right] += wt * tile
        norm[top:bottom, left:right] += wt
    return acc / norm.clamp_min(1e-12)
