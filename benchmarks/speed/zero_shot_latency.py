"""Per-image latency of the zero-shot methods on CPU (or --device).

    python benchmarks/speed/zero_shot_latency.py                 # ViT-B-16-plus-240, random weights, 240 px
    python benchmarks/speed/zero_shot_latency.py --repeats 7 --device cuda
    python benchmarks/speed/zero_shot_latency.py --aligners masked,dense --methods alfa

Prints the median over ``--repeats`` timed calls (after one warm-up call) of
one image scored end to end through ``Detector.predict`` (preprocessing,
backbone, prompt adaptation, windows, maps, resize to the input size) for ALFA
with each aligner (``--aligners``) and for WinCLIP (its masked windows), and the
time of one plain ``encode_image`` forward pass for reference.  Weights are
random (no pretrained weights are reachable here): speed does not depend on
the weight values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alfa_ad import Detector
from alfa_ad.model import load_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common.timing import median_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="alfa,winclip")
    ap.add_argument("--aligners", default="masked,value,dense,none", help="ALFA's aligners to time")
    args = ap.parse_args()

    backbone = load_backbone(args.model, weights="random", seed=0, device=args.device)
    rng = np.random.default_rng(0)
    h, w = backbone.image_size
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    print(f"model {args.model}, random weights, {w}x{h} px, device {backbone.device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats} after 1 warm-up")

    pixels = backbone.preprocess([Image.fromarray(image)])

    def forward() -> None:
        with torch.inference_mode():
            backbone.clip.encode_image(pixels)
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()

    fwd = median_seconds(forward, args.repeats)
    print(f"  encode_image forward pass : {fwd * 1000:8.1f} ms")
    results = {}
    runs = [(m, a) for m in args.methods.split(",") for a in (args.aligners.split(",") if m == "alfa" else ["masked"])]
    for method, aligner in runs:
        det = Detector(backbone, method=method, aligner=aligner, cache_dir=None, tile="none")
        det.predict([image], "bottle")  # text embeddings encoded once, outside the timing

        def one() -> None:
            det.predict([image], "bottle")
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()

        key = f"{method} ({aligner})"
        results[key] = median_seconds(one, args.repeats)
        print(f"  {key:18s} per image : {results[key] * 1000:8.1f} ms ({results[key] / fwd:.2f}x one forward pass)")


if __name__ == "__main__":
    main()
