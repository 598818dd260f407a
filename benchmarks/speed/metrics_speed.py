"""Wall time and peak memory of ``alfa_ad.evaluation.metrics.summarize`` (all seven metrics).

    python benchmarks/speed/metrics_speed.py                  # 1,000 maps of 256 x 256 (65.5 M pixels)
    python benchmarks/speed/metrics_speed.py --n 200 --seed 1

Generates (seeded) ``--n`` masks with 0-3 random elliptical blobs each (about a third of
the images have none, i.e. are normal), float32 maps = Gaussian-blurred mask + Gaussian
noise, image scores = map maximum, then times one ``summarize`` call.

Memory is the process peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
which counts numpy buffers, unlike ``tracemalloc``).  It is printed before the metrics
(imports + generated data: the baseline) and after them; the difference is what the
metrics added on top of the data.  The data are generated image by image into
preallocated arrays so that the baseline is not inflated by generation temporaries.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from scipy import ndimage


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def make_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    maps = np.empty((n, size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        for _ in range(rng.choice(4, p=[0.35, 0.35, 0.2, 0.1])):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(3, size / 8, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        blurred = ndimage.gaussian_filter(masks[i].astype(np.float32), sigma=4.0)
        maps[i] = blurred + rng.normal(0.0, 0.25, (size, size)).astype(np.float32)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2)).astype(np.float64)
    return labels, scores, masks, maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of maps (default 1000)")
    ap.add_argument("--size", type=int, default=256, help="map side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from alfa_ad.evaluation.metrics import summarize

    t0 = time.perf_counter()
    labels, scores, masks, maps = make_data(args.n, args.size, args.seed)
    t_gen = time.perf_counter() - t0
    print(f"data: {args.n} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f} M pixels, "
          f"{masks.mean():.2%} anomalous, {labels.sum()} anomalous images), generated in {t_gen:.1f} s")
    base = peak_rss_mb()
    print(f"peak RSS before metrics (baseline: imports + data): {base:.0f} MB")

    t0 = time.perf_counter()
    result = summarize(labels, scores, masks, maps)
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()

    for k, v in result.items():
        print(f"  {k:13s} {v:.6f}" if v is not None else f"  {k:13s} None")
    print(f"summarize wall time: {wall:.2f} s")
    print(f"peak RSS after metrics: {peak:.0f} MB (+{peak - base:.0f} MB over the baseline)")


if __name__ == "__main__":
    main()
