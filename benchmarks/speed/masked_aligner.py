"""How close the masked aligner runs to this machine's limit, next to our WinCLIP, in one run.

    python benchmarks/speed/masked_aligner.py                      # ViT-B-16-plus-240, random weights, 2 images
    python benchmarks/speed/masked_aligner.py --images 4 --repeats 3

For each configuration (ALFA's default: masked aligner at scales 2, 3, 4, 5 with windows
every 1, 2, 3, 3 patches; the previous default, scales 2, 3, 4 at stride 1; ALFA at
WinCLIP's scales 2, 3; WinCLIP, masked, 2, 3; "/t": windows every t patches) on the same
random images:

- FLOPs per image of the method's per-image model (``det.method(pixels, text)``),
  counted from the model's shapes by ``torch.utils.flop_counter`` (matrix products and
  attention; element-wise work is not counted);
- the measured fp32 GEMM rate of this machine on the transformer block's own four
  matrix-product shapes (most of those FLOPs), with the torch threads in use;
- seconds per image (median of ``--repeats`` timed batches after a warm-up), the limit
  (FLOPs / GEMM rate) and the achieved fraction (limit / measured time).

Random weights: speed does not depend on weight values; nothing here says anything
about accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from alfa_ad import Detector
from alfa_ad.model import load_backbone
from alfa_ad.model.preprocess import image_to_tensor, resize_to_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common.timing import median_seconds  # noqa: E402

CONFIGS = (  # label, Detector options
    ("ALFA default (masked, 2,3,4,5 /1,2,3,3)", {"method": "alfa"}),
    ("ALFA previous default (masked, 2,3,4 /1)", {"method": "alfa", "scales": (2, 3, 4)}),
    ("ALFA masked, scales 2,3 /1", {"method": "alfa", "scales": (2, 3)}),
    ("WinCLIP (masked, scales 2,3 /1)", {"method": "winclip"}),
)


def gemm_rate(width: int, tokens: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of fp32 ``F.linear`` on ``tokens`` rows at the four shapes of a transformer block
    (qkv ``W -> 3W``, out ``W -> W``, MLP ``W -> 4W`` and ``4W -> W``): total FLOPs over total
    time, the rate this model's own matrix products can reach here."""
    flops = seconds = 0.0
    for k, n in ((width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)):
        x, weight, bias = torch.randn(tokens, k), torch.randn(n, k), torch.randn(n)
        seconds += median_seconds(lambda: F.linear(x, weight, bias), repeats)
        flops += 2 * tokens * k * n
    return flops / seconds / 1e9


def model_flops(det: Detector, pixels: torch.Tensor, text) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        det.method(pixels, text)
    return counter.get_total_flops() / pixels.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    backbone = load_backbone(args.model, weights="random", seed=0, device="cpu")
    rng = np.random.default_rng(0)
    h, w = backbone.image_size
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(args.images)]
    pixels = resize_to_model([image_to_tensor(im) for im in images], backbone.image_size, backbone.mean, backbone.std)
    rate = gemm_rate(backbone.clip.visual.transformer.width)
    print(f"{args.model}, random weights, {w}x{h}, {args.images} images per batch, torch threads "
          f"{torch.get_num_threads()}; fp32 GEMM rate {rate:.0f} GFLOP/s (the block's linear shapes)")
    print(f"  {'configuration':38s} {'GFLOP/img':>10s} {'s/img':>7s} {'limit s':>8s} {'of limit':>8s} {'vs WinCLIP':>10s}")
    rows = []
    for label, options in CONFIGS:
        det = Detector(backbone, cache_dir=None, **options)
        text = det.class_text("object")
        flops = model_flops(det, pixels, text)
        t0 = time.perf_counter()
        seconds = median_seconds(lambda: det.method(pixels, text), args.repeats) / args.images
        rows.append((label, flops, seconds, time.perf_counter() - t0))
    winclip = rows[-1][2]
    for label, flops, seconds, _ in rows:
        limit = flops / 1e9 / rate
        print(f"  {label:38s} {flops / 1e9:10.1f} {seconds:7.2f} {limit:8.2f} {limit / seconds:8.0%} "
              f"{seconds / winclip:9.2f}x")


if __name__ == "__main__":
    main()
