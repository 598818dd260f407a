"""Whether a change left the outputs alone: scores, class-token scores, maps, kept-prompt
counts and explanation scores of 19 detector configurations (every method, aligner and
eq. 4 placement, the paper preset, LLM prompts, few-shot bank / residual / normalized
fusion, a tiled image; planted, mini and random weights), written to one ``.npz``;
``--compare A B`` prints the largest difference between two such files and exits 1
unless it is 0.

    git stash; python benchmarks/agreement/outputs_unchanged.py --out /tmp/before.npz --with-random; git stash pop
    python benchmarks/agreement/outputs_unchanged.py --out /tmp/after.npz --with-random
    python benchmarks/agreement/outputs_unchanged.py --compare /tmp/before.npz /tmp/after.npz

``--scales 2,3,4`` gives the ALFA configurations (not WinCLIP's, not a preset's) those
windows at stride 1, so a change of ALFA's default windows is compared at the old ones.

Uses only the public API (``Detector``, ``fit_normals``, ``predict``), so the same
script runs at both revisions.  About 25 s on 2 cores (60 s with ``--with-random``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIGS = {  # name -> (Detector keyword arguments, few-shot references, explain)
    "planted-alfa": (dict(weights="planted"), 0, 0),
    "planted-alfa-value": (dict(weights="planted", aligner="value"), 0, 0),
    "planted-alfa-dense": (dict(weights="planted", aligner="dense"), 0, 0),
    "planted-alfa-none": (dict(weights="planted", aligner="none"), 0, 0),
    "planted-alfa-ctx-all": (dict(weights="planted", contextual="all"), 0, 0),
    "planted-alfa-ctx-global": (dict(weights="planted", contextual="global"), 0, 0),
    "planted-alfa-ctx-soft": (dict(weights="planted", contextual="soft"), 0, 0),
    "planted-alfa-paper": (dict(weights="planted", preset="paper"), 0, 3),
    "planted-alfa-llm": (dict(weights="planted", llm_prompts=True), 0, 3),
    "planted-winclip": (dict(weights="planted", method="winclip"), 0, 0),
    "planted-winclip-anomalib": (dict(weights="planted", method="winclip", anomalib_compat=True), 0, 0),
    "planted-alfa-bank": (dict(weights="planted"), 2, 0),
    "planted-alfa-residual": (dict(weights="planted", few_shot_scorer="residual"), 2, 0),
    "planted-alfa-normalized": (dict(weights="planted", fusion="normalized"), 3, 0),
    "planted-winclip-fewshot": (dict(weights="planted", method="winclip"), 2, 0),
    "random-alfa": (dict(weights="random", model="ViT-B-16-plus-240", seed=3, batch_size=2), 0, 0),
    "mini-alfa": (dict(weights="mini"), 0, 0),
    "mini-winclip": (dict(weights="mini", method="winclip"), 0, 0),
    "mini-alfa-bank": (dict(weights="mini"), 2, 0),
}


def _images(folder: Path):
    from PIL import Image

    from alfa_ad.demo import make_synthetic_dataset

    root = Path(make_synthetic_dataset(folder, n_good=3, n_defect=3, seed=5))
    tests = sorted(root.rglob("test/*/*.png"))
    other = Path(make_synthetic_dataset(folder.parent / "normals", n_good=3, n_defect=0, seed=6))
    normals = sorted(other.rglob("test/good/*.png"))
    wide = Image.open(tests[-1]).convert("RGB")
    wide = wide.resize((wide.width * 2, wide.height))  # an elongated image: scored in tiles
    return tests + [wide], normals


def digest(out: Path, only: list[str] | None, scales: tuple[int, ...] | None = None) -> None:
    import torch

    from alfa_ad import Detector

    torch.manual_seed(0)
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tests, normals = _images(Path(tmp) / "data")
        for name, (kwargs, shots, explain) in CONFIGS.items():
            if only and name not in only:
                continue
            if name.startswith("random") and "--with-random" not in sys.argv:
                continue
            if scales and "winclip" not in name and "preset" not in kwargs:  # ALFA's windows, given
                kwargs = {**kwargs, "scales": scales}
            det = Detector(cache_dir=False, **kwargs)
            if shots:
                det.fit_normals(normals[:shots])
            results = det.predict(tests, "widget", explain=explain)
            arrays[f"{name}/score"] = np.array([r.score for r in results])
            arrays[f"{name}/global"] = np.array([r.global_score for r in results])
            for i, r in enumerate(results):
                arrays[f"{name}/map{i}"] = r.anomaly_map
            kept = [len(r.kept_prompts["normal"]) * 1000 + len(r.kept_prompts["abnormal"]) for r in results]
            arrays[f"{name}/kept"] = np.array(kept, dtype=np.float64)
            if explain:
                arrays[f"{name}/descriptors"] = np.array([d.score for r in results for d in r.descriptors])
            print(f"{name}: scores {np.round(arrays[name + '/score'], 4).tolist()}")
    np.savez_compressed(out, **arrays)
    print(f"wrote {len(arrays)} arrays to {out}")


def compare(a: Path, b: Path) -> int:
    left, right = np.load(a), np.load(b)
    worst = 0.0
    names = sorted(set(left.files) | set(right.files))
    for key in names:
        if key not in left.files or key not in right.files:
            print(f"{key}: only in {'the first' if key in left.files else 'the second'} file")
            worst = float("inf")
            continue
        x, y = left[key], right[key]
        diff = float("inf") if x.shape != y.shape else float(np.abs(x - y).max(initial=0.0))
        worst = max(worst, diff)
    configs = sorted({k.split("/")[0] for k in names})
    print(f"{len(configs)} configurations, {len(names)} arrays: largest |difference| {worst:.3g}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--with-random", action="store_true", help="also a random ViT-B-16-plus-240 (slow)")
    parser.add_argument("--scales", default=None, help="window scales for the ALFA configurations (e.g. 2,3,4: "
                        "a default change compared at the old default's windows; at stride 1)")
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    digest(args.out, args.only, tuple(int(v) for v in args.scales.split(",")) if args.scales else None)
