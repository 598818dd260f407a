"""musc against a fixed pool (what ``alfa-ad serve --method musc`` does per upload) next
to WinCLIP zero-shot and musc in a run's group, in one process on the same images.

    python benchmarks/speed/musc_pool.py                     # mini-CLIP, pool of 63, 8 uploads
    python benchmarks/speed/musc_pool.py --weights planted --pool 16

Prints, per method, the median seconds per image of ``Detector.predict`` over single
uploads (musc with the pool fitted once, ``Detector.fit_pool``; WinCLIP zero-shot), the
time of fitting the pool, and musc's seconds per image when the uploads and the pool are
scored as one group (``alfa-ad run``'s way), with each as a ratio to WinCLIP.  Generated
images (``alfa_ad.demo.make_synthetic_dataset``); the weights say nothing about accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common.timing import median_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="mini", choices=("mini", "planted", "random"))
    ap.add_argument("--pool", type=int, default=63, help="pool images (default 63: group 64 - 1)")
    ap.add_argument("--uploads", type=int, default=8, help="single images timed (default 8)")
    args = ap.parse_args()
    import torch

    from alfa_ad import Detector
    from alfa_ad.demo import make_synthetic_dataset
    from alfa_ad.io.images import load_image

    with tempfile.TemporaryDirectory() as tmp:
        pool_root = make_synthetic_dataset(Path(tmp) / "pool", n_good=args.pool, n_defect=0, seed=1)
        test_root = make_synthetic_dataset(Path(tmp) / "test", n_good=args.uploads // 2,
                                           n_defect=args.uploads - args.uploads // 2, seed=2)
        pool = [load_image(p) for p in sorted((pool_root / "widget" / "test").rglob("*.png"))]
        uploads = [load_image(p) for p in sorted((test_root / "widget" / "test").rglob("*.png"))]
    musc = Detector(weights=args.weights, method="musc", group=args.pool + 1, tile="none", cache_dir=None)
    winclip = Detector(musc.backbone, method="winclip", tile="none", cache_dir=None)
    start = time.perf_counter()
    musc.fit_pool(pool)
    fit = time.perf_counter() - start
    print(f"{musc.weights_label}; torch threads {torch.get_num_threads()}; pool {len(pool)} images fitted in "
          f"{fit:.2f} s; {len(uploads)} uploads, one at a time")

    def per_image(det) -> float:
        return median_seconds(lambda: [det.predict([im], "widget") for im in uploads], 3) / len(uploads)

    base = per_image(winclip)
    pooled = per_image(musc)
    musc.method.clear_pool()
    group = median_seconds(lambda: musc.predict([*pool, *uploads[:1]], "widget"), 1) / (len(pool) + 1)
    print(f"{'row':<52} {'s / image':>10} {'x WinCLIP':>10}")
    for label, seconds in (("WinCLIP zero-shot, one upload", base),
                           (f"musc against the fixed pool of {len(pool)}, one upload", pooled),
                           (f"musc in a run's group of {len(pool) + 1} (per image)", group)):
        print(f"{label:<52} {seconds:>10.4f} {seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
