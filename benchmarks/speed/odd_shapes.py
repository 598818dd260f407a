"""Time of odd-shaped images next to a square one, with the default tiling (``--tile auto``).

    python benchmarks/speed/odd_shapes.py                     # ViT-B-16-plus-240, random weights, ALFA default
    python benchmarks/speed/odd_shapes.py --method winclip --repeats 3

Writes a 240x240 PNG, a 4000x60 PNG, a 40x3000 JPEG and a 2048x2048 PNG to a temporary
folder and scores each file with ``Detector.predict`` (what ``alfa-ad run`` and the
service call per image: decoding, tiling, the model, stitching), median of
``--repeats`` after a warm-up.  Prints per image its tiles, seconds, the ratio to the
240x240 image and whether the map covers the whole image.  Random weights: speed does
not depend on weight values; nothing here says anything about accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alfa_ad import Detector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common.timing import median_seconds  # noqa: E402

SHAPES = (("square 240x240", 240, 240, "png"), ("strip 4000x60", 60, 4000, "png"),
          ("strip 40x3000", 3000, 40, "jpg"), ("large 2048x2048", 2048, 2048, "png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--method", default="alfa")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    det = Detector(model=args.model, weights="random", method=args.method, cache_dir=None, device="cpu")
    rng = np.random.default_rng(0)
    print(f"{det.backbone.weights.model_name}, random weights, {args.method} ({det.config.aligner} aligner, "
          f"scales {det.config.scales}), tile {det.config.tile}, torch threads {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, h, w, ext in SHAPES:
            path = Path(tmp) / f"{label.split()[0]}_{w}x{h}.{ext}"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
            result = det(path, "object")
            seconds = median_seconds(lambda: det.predict([path], "object"), args.repeats)
            covers = result.anomaly_map.shape == (h, w) and bool(np.isfinite(result.anomaly_map).all())
            rows.append((label, result.tiles, seconds, covers))
    square = rows[0][2]
    print(f"  {'image':18s} {'tiles':>5s} {'s/image':>8s} {'vs 240x240':>10s}  map covers the image")
    for label, tiles, seconds, covers in rows:
        print(f"  {label:18s} {tiles:5d} {seconds:8.2f} {seconds / square:9.2f}x  {'yes' if covers else 'NO'}")


if __name__ == "__main__":
    main()
