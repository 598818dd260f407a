"""Write a held-out benchmark in the MVTec AD layout from evaluation-stream scenes.

    <root>/<class>/train/good/NNN.png
    <root>/<class>/test/good/NNN.png
    <root>/<class>/test/<defect>/NNN.png
    <root>/<class>/ground_truth/<defect>/NNN_mask.png
    <root>/manifest.json

Classes are object kinds and texture classes (``vocab.TEXTURES``: the material
fills the frame).  As in MVTec AD, a class has one look: an object's colour and
background texture are drawn once per class (from the seed) and only placement,
size, rotation and the defect vary; a texture's colour and pattern parameters are
drawn once per class and each image is another piece of that material.  Each class
has its own defects (``vocab.defects_of``).  Every object-defect combination is in the
test set, including those held out of training (``vocab.held_out``, listed in
the manifest).  Scenes come from the evaluation stream, so none is a training
scene.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import eval_rng, render_variants, sample_scene, sample_texture_scene, texture_eval_rng
from .vocab import ALL_DEFECTS, BACKGROUNDS, CLASSES, COLOURS, OBJECTS, TEXTURES, defects_of, held_out

TRAIN_SPLIT, GOOD_SPLIT = 1, 2  # rng keys; defect d uses 10 + its index in ALL_DEFECTS


def class_look(seed: int, index: int) -> dict:
    rng = eval_rng(seed, index, 0)
    return {"colour": str(rng.choice(list(COLOURS))), "background": str(rng.choice(list(BACKGROUNDS))),
            "bg_seed": int(rng.integers(2**62))}


def texture_look(seed: int, index: int) -> dict:
    rng = texture_eval_rng(seed, index, 0)
    return {"colour": str(rng.choice(list(COLOURS))), "bg_seed": int(rng.integers(2**62))}


def _scene(seed: int, ci: int, kind: str, look: dict, split: int, i: int, defect: str | None):
    if kind in TEXTURES:
        s = sample_texture_scene(texture_eval_rng(seed, ci, split, i), training=False, kind=kind,
                                 colour=look["colour"], style="", defect=defect)
        return replace(s, bg_seed=look["bg_seed"])
    s = sample_scene(eval_rng(seed, ci, split, i), training=False, kind=kind, colour=look["colour"],
                     background_kind=look["background"], style="", defect=defect)
    return replace(s, bg_seed=look["bg_seed"])


def write_benchmark(root: str | Path, *, classes=OBJECTS, seed: int = 0, n_train: int = 8, n_good: int = 10,
                    n_defect: int = 4, defects=None, size: int = 192) -> dict:
    """Render the benchmark under ``root``; returns (and writes) its manifest.  ``defects``:
    those to include (each class gets the ones it has); default: all of each class's."""
    root = Path(root)
    bad = [c for c in classes if c not in CLASSES]
    if bad:
        raise ValueError(f"unknown class {', '.join(bad)}; choose from {', '.join(CLASSES)}")
    per_class = {k: [d for d in defects_of(k) if defects is None or d in defects] for k in classes}
    manifest = {"generator": "tools/mini_clip", "seed": seed, "size": size, "classes": {},
                "held_out_of_training": sorted(f"{k}/{d}" for k in classes for d in per_class[k] if held_out(k, d))}
    for kind in classes:
        texture = kind in TEXTURES
        ci = TEXTURES.index(kind) if texture else OBJECTS.index(kind)
        look = texture_look(seed, ci) if texture else class_look(seed, ci)
        folder = root / kind
        jobs = [("train/good", TRAIN_SPLIT, None, n_train), ("test/good", GOOD_SPLIT, None, n_good)]
        jobs += [(f"test/{d}", 10 + ALL_DEFECTS.index(d), d, n_defect) for d in per_class[kind]]
        for sub, split, defect, n in jobs:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            if defect:
                (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, mask = render_variants(_scene(seed, ci, kind, look, split, i, defect), [defect], size)[0]
                Image.fromarray(img).save(folder / sub / f"{i:03d}.png")
                if defect:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
        about = {"texture": True} if texture else {"background": look["background"]}
        manifest["classes"][kind] = {"colour": look["colour"], **about, "train": n_train, "test_good": n_good,
                                     "test_per_defect": n_defect}
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--classes", default=",".join(OBJECTS),
                    help=f"comma-separated; objects {','.join(OBJECTS)}, textures {','.join(TEXTURES)} (or 'all')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--good", type=int, default=10)
    ap.add_argument("--per-defect", type=int, default=4)
    ap.add_argument("--size", type=int, default=192)
    a = ap.parse_args(argv)
    classes = list(CLASSES) if a.classes == "all" else [c for c in a.classes.split(",") if c]
    bad = [c for c in classes if c not in CLASSES]
    if bad:
        raise SystemExit(f"error: unknown class {', '.join(bad)}; choose from {', '.join(CLASSES)}")
    m = write_benchmark(a.out, classes=classes, seed=a.seed, n_train=a.train, n_good=a.good, n_defect=a.per_defect,
                        size=a.size)
    print(f"wrote {len(m['classes'])} classes to {a.out}")


if __name__ == "__main__":
    main()
