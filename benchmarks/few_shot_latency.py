"""Per-image latency added by the few-shot memory bank, and the bank's size.

    python benchmarks/few_shot_latency.py                    # 1, 4 and 200 normals, ALFA, CPU
    python benchmarks/few_shot_latency.py --normals 1,4 --method winclip

ViT-B-16-plus-240 with random weights (speed does not depend on weight values),
240 px images.  For each number of normals the bank is built (with greedy
coreset subsampling to ``--coreset`` features per layer, the CLI default), then
one image is scored ``--repeats`` times after a warm-up; the figure is the median
minus the zero-shot median measured the same way in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from alfa_ad import Detector
from alfa_ad.model import load_backbone


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--normals", default="1,4,200")
    ap.add_argument("--coreset", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--method", default="alfa")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    backbone = load_backbone("ViT-B-16-plus-240", weights="random", seed=0, device=args.device)
    det = Detector(backbone, method=args.method, cache_dir=None)
    rng = np.random.default_rng(0)
    h, w = backbone.image_size
    query = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    det.predict([query], "bottle")
    base = median_seconds(lambda: det.predict([query], "bottle"), args.repeats)
    print(f"{args.method}, ViT-B-16-plus-240 random weights, {w}x{h}, device {backbone.device}, "
          f"torch threads {torch.get_num_threads()}; zero-shot per image {base * 1000:.1f} ms")
    for n in (int(v) for v in args.normals.split(",")):
        normals = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]
        t = time.perf_counter()
        det.fit_normals(normals, coreset=args.coreset)
        fit = time.perf_counter() - t
        bank = det.method.bank_size
        tensors = det.method.bank if args.method == "alfa" else [det.method.ref_patches, *det.method.ref_windows]
        mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
        per = median_seconds(lambda: det.predict([query], "bottle"), args.repeats)
        print(f"  {n:4d} normals: bank {bank:6d} features (~{mb:.0f} MB), fit {fit:6.1f} s, "
              f"per image {per * 1000:7.1f} ms, added {1000 * (per - base):+7.1f} ms")
        det.clear_normals()


if __name__ == "__main__":
    main()
