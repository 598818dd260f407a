"""Scenes: what is in an image (sampled, seeded) and how it is rendered.

A :class:`Scene` is a small record (object kind, colour, background, style,
placement, defect); :func:`render` turns it into an RGB image and the defect's
ground-truth mask.  Geometry is relative, and every line width is in pixels of
a 64 px view (:data:`MODEL_PX`, the mini-CLIP's input), so a scene looks the
same to the model whatever size it is rendered at.  Training scenes and
evaluation scenes come from different random streams (:data:`TRAIN_STREAM`,
:data:`EVAL_STREAM`), so no evaluation scene is a training scene.  Texture scenes
(:func:`sample_texture_scene`, rendered by ``surfaces.py``) have streams of their
own (:data:`TEXTURE_TRAIN_STREAM`, :data:`TEXTURE_EVAL_STREAM`): adding them changed
no draw of an object scene.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

from . import defects as D
from .shapes import SHAPES, Frame
from .textures import background
from .vocab import BACKGROUNDS, COLOURS, OBJECTS, TEXTURES, allowed_defects

MODEL_PX = 64
SUPERSAMPLE = 2
TRAIN_STREAM = 0x7A11  # rng keys [TRAIN_STREAM, seed, index]
EVAL_STREAM = 0xE7A1  # rng keys [EVAL_STREAM, seed, ...]
TEXTURE_TRAIN_STREAM = 0x7E27  # texture scenes: rng keys [TEXTURE_TRAIN_STREAM, seed, index]
TEXTURE_EVAL_STREAM = 0x7E2E  # rng keys [TEXTURE_EVAL_STREAM, seed, ...]
STYLES = ("", "bright", "dark", "close-up")
STYLE_P = (0.55, 0.15, 0.15, 0.15)
MIN_DEFECT_FRACTION = 0.002  # of the image area; smaller draws are redrawn


@dataclass(frozen=True)
class Scene:
    seed: int  # seeds the rendering (texture, shape details, defect geometry)
    kind: str
    colour: str
    background: str
    style: str
    cx: float  # centre, fraction of the image
    cy: float
    r: float  # object size, fraction of the image
    angle: float
    defect: str | None = None
    bg_seed: int | None = None  # seeds the background instead of ``seed`` (one texture for a benchmark class)

    def with_defect(self, defect: str | None) -> "Scene":
        return replace(self, defect=defect)


def train_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([TRAIN_STREAM, seed, index])


def eval_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([EVAL_STREAM, seed, *keys])


def texture_train_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([TEXTURE_TRAIN_STREAM, seed, index])


def texture_eval_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([TEXTURE_EVAL_STREAM, seed, *keys])


def sample_texture_scene(rng: np.random.Generator, *, training: bool, kind: str | None = None,
                         colour: str | None = None, style: str | None = None, defect: str | None = "random",
                         p_defect: float = 0.5) -> Scene:
    """A texture scene (the material fills the frame; ``background`` is empty).  ``cx, cy`` are
    unused, ``r`` sets the defects' size (as an object's size does), ``angle`` their frame."""
    kind = kind or str(rng.choice(TEXTURES))
    if kind not in TEXTURES:
        raise ValueError(f"unknown texture {kind!r}; choose from {', '.join(TEXTURES)}")
    colour = colour or str(rng.choice(list(COLOURS)))
    style = str(rng.choice(STYLES, p=STYLE_P)) if style is None else style
    r = rng.uniform(0.26, 0.36)
    if defect == "random":
        defect = str(rng.choice(allowed_defects(kind, training))) if rng.random() < p_defect else None
    elif defect is not None and defect not in allowed_defects(kind, training):
        raise ValueError(f"{kind} with {defect} is " + ("held out of training" if training else "not a texture defect"))
    return Scene(int(rng.integers(2**62)), kind, colour, "", style, 0.5, 0.5, float(r),
                 float(rng.uniform(0, 2 * np.pi)), defect)


def sample_scene(rng: np.random.Generator, *, training: bool, kind: str | None = None, colour: str | None = None,
                 background_kind: str | None = None, style: str | None = None, defect: str | None = "random",
                 p_defect: float = 0.5) -> Scene:
    """Draw a scene; ``defect="random"`` picks none with probability ``1 - p_defect``, else
    one of the defects allowed for the kind (training excludes held-out combinations)."""
    kind = kind or str(rng.choice(OBJECTS))
    colour = colour or str(rng.choice(list(COLOURS)))
    background_kind = background_kind or str(rng.choice(list(BACKGROUNDS)))
    style = str(rng.choice(STYLES, p=STYLE_P)) if style is None else style
    r = rng.uniform(0.38, 0.44) if style == "close-up" else rng.uniform(0.28, 0.38)
    cx, cy = rng.uniform(r + 0.03, 1 - r - 0.03, 2)
    if defect == "random":
        defect = str(rng.choice(allowed_defects(kind, training))) if rng.random() < p_defect else None
    elif defect is not None and training and defect not in allowed_defects(kind, True):
        raise ValueError(f"{kind} with {defect} is held out of training")
    return Scene(int(rng.integers(2**62)), kind, colour, background_kind, style, float(cx), float(cy), float(r),
                 float(rng.uniform(0, 2 * np.pi)), defect)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _object_layer(scene: Scene, size: int, u: float) -> D.Layer:
    rng = np.random.default_rng([scene.seed, 2])
    f = Frame(size, scene.cx * size, scene.cy * size, scene.r * size, scene.angle)
    shape = SHAPES[scene.kind](f, rng)
    base = np.clip(np.asarray(COLOURS[scene.colour], dtype=np.float32) + rng.normal(0, 10, 3), 0, 255)
    yy, xx = _grid(size)
    phi = rng.uniform(0, 2 * np.pi)
    light = ((xx - f.cx) * np.cos(phi) + (yy - f.cy) * np.sin(phi)) / f.r  # about -1..1 over the object
    colour = base * (1 + 0.15 * light)[..., None] + rng.normal(0, 3, (size, size, 1)).astype(np.float32)
    for mask, factor in shape.details:
        colour[mask] *= factor
    return D.Layer(np.clip(colour, 0, 255).astype(np.float32), shape.body, f, u)


def render(scene: Scene, size: int = MODEL_PX) -> tuple[np.ndarray, np.ndarray]:
    """``(image (size, size, 3) uint8, defect mask (size, size) bool)``."""
    return render_variants(scene, [scene.defect], size)[0]


def render_variants(scene: Scene, defects, size: int = MODEL_PX) -> list[tuple[np.ndarray, np.ndarray]]:
    """The scene rendered once per entry of ``defects`` (None = intact); background, object
    and each defect's geometry are the same as :func:`render` of ``scene.with_defect(d)``."""
    if scene.kind in TEXTURES:
        from .surfaces import render_texture_variants

        return render_texture_variants(scene, defects, size, SUPERSAMPLE, MODEL_PX)
    big = size * SUPERSAMPLE
    u = big / MODEL_PX
    bg_seed = scene.seed if scene.bg_seed is None else scene.bg_seed
    bg0 = background(scene.background, big, u, np.random.default_rng([bg_seed, 1]))
    base = _object_layer(scene, big, u)
    out = []
    for defect in defects:
        layer, gt = base, np.zeros((big, big), dtype=bool)
        if defect is not None:
            rng = np.random.default_rng([scene.seed, 3])
            for _attempt in range(20):
                layer = D.Layer(base.colour.copy(), base.body.copy(), base.frame, u)
                gt = D.apply(defect, layer, rng)
                if gt.mean() >= MIN_DEFECT_FRACTION:
                    break
        out.append(_compose(scene.style, bg0, layer, gt, size, u))
    return out


def _compose(style: str, bg0: np.ndarray, layer: D.Layer, gt: np.ndarray, size: int, u: float):
    big = bg0.shape[0]
    shadow = Image.fromarray(layer.body.astype(np.uint8) * 255).transform(
        (big, big), Image.AFFINE, (1, 0, -2 * u, 0, 1, -2 * u)).filter(ImageFilter.GaussianBlur(2 * u))
    bg = bg0 * (1 - 0.35 * (np.asarray(shadow, dtype=np.float32) / 255.0)[..., None])
    img = np.where(layer.body[..., None], layer.colour, bg)
    return _finish(style, img, gt, size)


def _finish(style: str, img: np.ndarray, gt: np.ndarray, size: int):
    """Photo style, then the supersampled canvas down to ``size``: ``(image uint8, mask bool)``."""
    if style == "bright":
        img = img * 1.2 + 25
    elif style == "dark":
        img = img * 0.55
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    mask = Image.fromarray(gt.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return np.asarray(im), np.asarray(mask) > 76
