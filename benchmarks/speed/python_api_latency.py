"""The Python API's costs: repeated detect() calls, few-shot references, large images
(CPU by default, random weights).

    python benchmarks/speed/python_api_latency.py                  # ViT-B-16-plus-240 at 240 px
    python benchmarks/speed/python_api_latency.py --device cuda --repeats 7

Prints medians over ``--repeats`` timed calls (after one warm-up call):

* ``detect(image)`` zero-shot, and ``detect(image, normals=[4 images])`` repeated with
  the same references (the memory bank is remembered by their content), as a ratio
  to zero-shot (target <= 1.3), and the first few-shot call (fits the bank);
* one 2048 x 2048 image scored whole (``tile="none"``) and in tiles (``tile="auto"``:
  480-px tiles, 25 % overlap).

Random weights: speed does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from alfa_ad import Detector, detect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common.timing import median_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    opts = dict(model=args.model, weights="random", device=args.device, cache_dir=None)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 240, 3), dtype=np.uint8)
    normals = [rng.integers(0, 255, (240, 240, 3), dtype=np.uint8) for _ in range(4)]

    zero = median_seconds(lambda: detect(image, "object", **opts), args.repeats)
    t = time.perf_counter()
    detect(image, "object", normals=[n.copy() for n in normals], **opts)  # new content: fits the bank
    first = time.perf_counter() - t
    few = median_seconds(lambda: detect(image, "object", normals=normals, **opts), args.repeats)
    print(f"detect() zero-shot: {zero * 1e3:.0f} ms; with 4 normals: first call {first * 1e3:.0f} ms, "
          f"repeated {few * 1e3:.0f} ms = {few / zero:.2f}x zero-shot (target <= 1.3x)")

    big = rng.integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    for tile in ("none", "auto"):
        det = Detector(**opts, tile=tile)
        tiles = det(big).tiles
        sec = median_seconds(lambda: det(big), max(1, args.repeats // 2))
        print(f"2048 x 2048 image, tile={tile}: {tiles} tile(s), {sec:.2f} s per image")


if __name__ == "__main__":
    main()
