"""FLOPs per image of the model (the throughput model in docs/scaling.md).

    python benchmarks/speed/flops.py                       # ViT-B-16-plus-240, random weights
    python benchmarks/speed/flops.py --methods alfa        # skip WinCLIP (about 10x the work)

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and
attention; element-wise work is not counted) for one 240x240 image, on the CPU:
the image tower alone (``clip.encode_image``), then ``Detector.predict`` of each method
zero-shot, after a first call so that the prompt embeddings are cached and not counted.
FLOPs do not depend on the weight values, so random weights give the real figure.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from alfa_ad.detector import Detector


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="open_clip model name (default: the Detector's)")
    ap.add_argument("--methods", default="alfa,winclip")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 240, 3), dtype=np.uint8))
    options = {"model": args.model} if args.model else {}
    rows = []
    for i, method in enumerate(m.strip() for m in args.methods.split(",")):
        det = Detector(method=method, weights="random", llm_prompts=False, cache_dir=None, device="cpu", **options)
        if i == 0:
            pixels = det.backbone.preprocess([image])
            rows.append(("image tower alone (encode_image)", count(lambda: det.backbone.clip.encode_image(pixels))))
        det.predict([image], "object")  # prompt embeddings computed and cached here, not counted
        rows.append((f"{method} zero-shot predict (tower + method)", count(lambda: det.predict([image], "object"))))
    name = det.backbone.weights.model_name
    print(f"{name}, one 240x240 image, GFLOP (matmuls and attention):")
    for label, gflop in rows:
        print(f"  {label:45s} {gflop:8.1f}")


if __name__ == "__main__":
    main()
