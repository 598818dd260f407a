"""End-to-end throughput and memory of a batch run (issue 14).

    python benchmarks/throughput.py                       # both parts below, CPU
    python benchmarks/throughput.py --part speed --images 64
    python benchmarks/throughput.py --part memory --sizes 500,5000

* ``speed``: ViT-B-16-plus-240 (random weights) over ``--images`` real test images from
  ../shared/data (repeated when there are fewer): images/s of the whole run
  (``alfa-ad run``: decode -> model -> maps -> score files, overlays, metrics, report)
  against images/s of the model step alone (``Detector.method`` on preprocessed batches
  of the same batch size), and their ratio (target >= 0.9).
* ``memory``: peak RSS of the whole ``alfa-ad run`` process at each of ``--sizes``
  images (the same files repeated under distinct names, planted model so that it
  runs in minutes), and the ratio of the largest to the smallest (target <= 1.1).

Every figure is printed; nothing is asserted.  Random weights: speed does not depend on
the weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_images() -> list[Path]:
    from alfa_ad.io.datasets import discover

    out = []
    for root in sorted(p for p in DATA.iterdir() if p.is_dir()):
        dataset, _ = discover(root)
        out += [s.path for samples in dataset.values() for s in samples]
    if not out:
        sys.exit(f"no images under {DATA}")
    return out


def folder_of(n: int, files: list[Path], where: Path) -> Path:
    """``where`` with ``n`` symbolic links to ``files`` (repeated), as a plain folder."""
    where.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = files[i % len(files)]
        link = where / f"{i:06d}{src.suffix.lower()}"
        if not link.exists():
            link.symlink_to(src)
    return where


def timed_run(args: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one ``alfa-ad`` process."""
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter();"
             "p = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t;"
             "print(json.dumps([p.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    res = subprocess.run([sys.executable, "-c", probe, "alfa-ad", *args], env=env, capture_output=True, text=True)
    rc, wall, peak = json.loads(res.stdout.strip().splitlines()[-1])
    if rc != 0:
        sys.exit(f"alfa-ad {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return wall, peak


def model_only(n: int, batch: int, files: list[Path]) -> float:
    import torch

    from alfa_ad import Detector
    from alfa_ad.io.images import load_image

    det = Detector(weights="random", cache_dir=None, llm_prompts=False, batch_size=batch, tile="none")
    text = det._text_state("object")
    images = [load_image(files[i % len(files)]) for i in range(batch)]
    pixels = det.backbone.preprocess(images)
    det.method(pixels, text)  # warm-up
    t = time.perf_counter()
    done = 0
    while done < n:
        det.method(pixels, text)
        done += batch
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return done / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "memory", "both"), default="both")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sizes", default="500,5000")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "alfa-ad-throughput"))
    args = ap.parse_args()
    files = real_images()
    base = Path(args.folder)
    env = {**os.environ, "ALFA_AD_CACHE": str(base / "cache")}
    if args.part in ("speed", "both"):
        data = folder_of(args.images, files, base / f"speed-{args.images}")
        wall, peak = timed_run(["run", "--data", str(data), "--out", str(base / "out-speed"), "--weights", "random",
                                "--no-llm", "--tile", "none", "--batch-size", str(args.batch_size)], env)
        e2e = args.images / wall
        model = model_only(args.images, args.batch_size, files)
        print(f"speed (ViT-B-16-plus-240, {args.images} images, batch {args.batch_size}): end to end "
              f"{e2e:.2f} images/s (process wall incl. start-up {wall:.1f} s), model step alone {model:.2f} images/s, "
              f"ratio {e2e / model:.2f}")
    if args.part in ("memory", "both"):
        sizes = [int(s) for s in args.sizes.split(",")]
        peaks = {}
        for n in sizes:
            data = folder_of(n, files, base / f"mem-{n}")
            wall, peak = timed_run(["run", "--data", str(data), "--out", str(base / f"out-mem-{n}"), "--weights",
                                    "planted", "--no-llm", "--batch-size", str(args.batch_size)], env)
            peaks[n] = peak
            print(f"memory: {n} images (planted model, overlays and report written): peak RSS {peak:.0f} MB, "
                  f"{wall:.0f} s")
        lo, hi = min(sizes), max(sizes)
        print(f"peak RSS {hi} vs {lo} images: {peaks[hi] / peaks[lo]:.3f}x (target <= 1.10)")


if __name__ == "__main__":
    main()
