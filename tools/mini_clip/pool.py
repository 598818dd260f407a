"""The training pool: training-stream scenes, each rendered intact and with defects, once.

Scene ``index`` of a run is a texture scene with probability ``textures`` (decided on a
stream of its own, :data:`TEXTURE_PICK`), else an object scene exactly as before textures
existed, so ``textures=0`` renders the pool it always rendered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .scenes import render_variants, sample_scene, sample_texture_scene, texture_train_rng, train_rng
from .vocab import allowed_defects

TEXTURE_PICK = 0x7E29  # rng keys [TEXTURE_PICK, seed, index]: is pool scene ``index`` a texture?


def is_texture_slot(seed: int, index: int, textures: float) -> bool:
    """Whether pool scene ``index`` is a texture scene (probability ``textures``; own stream)."""
    return textures > 0 and np.random.default_rng([TEXTURE_PICK, seed, index]).random() < textures


def _sample_group(seed: int, index: int, variants: int, textures: float):
    """Training scene ``index`` and its defects: ``None`` (intact) and ``variants - 1`` different ones."""
    if is_texture_slot(seed, index, textures):
        rng = texture_train_rng(seed, index)
        scene = sample_texture_scene(rng, training=True, defect=None)
    else:
        rng = train_rng(seed, index)
        scene = sample_scene(rng, training=True, defect=None)
    options = allowed_defects(scene.kind, True)
    return scene, [None] + [str(d) for d in rng.choice(options, variants - 1, replace=False)]


def _render_group(args):
    """One training scene rendered intact and with ``variants - 1`` different defects."""
    seed, index, size, variants, textures = args
    scene, defects = _sample_group(seed, index, variants, textures)
    images = np.stack([img for img, _ in render_variants(scene, defects, size)])
    return images, [scene.with_defect(d) for d in defects]


def cached_pool(folder: Path | None, seed: int, scenes: int, size: int, variants: int, workers: int,
                textures: float):
    """:func:`render_pool`, kept in ``folder`` (a resumed run loads it instead of rendering it
    again); the scene records are re-drawn (cheap).  ``(pool, records, sha256 of the pool)``."""
    import hashlib

    key = hashlib.sha256(json.dumps([seed, scenes, size, variants, textures]).encode()).hexdigest()[:12]
    path = folder / f"pool-{key}.npy" if folder else None
    if path is not None and path.is_file():
        pool = np.load(path)
        records = []
        for i in range(scenes):
            scene, defects = _sample_group(seed, i, variants, textures)
            records.append([scene.with_defect(d) for d in defects])
    else:
        pool, records = render_pool(seed, scenes, size, variants, workers, textures)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, pool)
            os.replace(tmp, path)
    return pool, records, hashlib.sha256(pool.tobytes()).hexdigest()


def render_pool(seed: int, scenes: int, size: int, variants: int, workers: int, textures: float = 0.0):
    """``(uint8 images (scenes, variants, H, W, 3), scene records)``: the training images,
    rendered once (the model then sees each several times, with freshly drawn captions)."""
    jobs = [(seed, i, size, variants, textures) for i in range(scenes)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            out = pool.map(_render_group, jobs, chunksize=32)
    else:
        out = [_render_group(j) for j in jobs]
    return np.stack([o[0] for o in out]), [o[1] for o in out]
