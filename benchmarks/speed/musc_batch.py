"""musc on growing batches: seconds per image and the run's peak memory, to show that its
memory is flat beyond one group (``group`` images of a class are scored together).

    python benchmarks/speed/musc_batch.py                        # mini-CLIP, 100 and 500 images
    python benchmarks/speed/musc_batch.py --weights planted --sizes 64,500

Writes a generated one-class folder (``alfa_ad.demo.make_synthetic_dataset``: textured
parts, a third with a painted spot) of the largest size once, then for each size runs
``alfa-ad run --method musc --no-overlays`` on the first N images as a fresh process and
reports its wall time, seconds per image and peak RSS (``ru_maxrss`` of the child, so
each size is its own process).  Flat memory means the peak RSS at the largest size is
within a few percent of the one at the smallest size that already fills a group.
The weights say nothing about accuracy here (the mini-CLIP is a small model trained on
synthetic scenes); the figures are time and memory only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child_peak_mib(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``(wall seconds, peak RSS in MiB)`` of one run of ``command`` in a fresh process
    (``os.wait4``: that child's own resource usage)."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a long progress bar cannot block the child
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        if code != 0:
            log.seek(0)
            sys.exit(f"{' '.join(command)} failed ({code}): {log.read().strip()[-500:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="mini", choices=("mini", "planted", "random"))
    ap.add_argument("--sizes", default="100,500", help="images per run, increasing (default 100,500)")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "alfa-ad-musc-batch"))
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    from alfa_ad.demo import make_synthetic_dataset

    folder = Path(args.folder)
    root = folder / f"data-{sizes[-1]}"
    if not root.is_dir():
        make_synthetic_dataset(root, n_good=sizes[-1] - sizes[-1] // 3, n_defect=sizes[-1] // 3, seed=0)
    images = sorted((root / "widget" / "test").rglob("*.png"))
    env = dict(os.environ, ALFA_AD_CACHE=str(folder / "cache"))
    print(f"musc, {args.weights} weights, {len(images)} generated images of one class, 1/3 with a painted spot")
    print(f"{'images':>7} {'wall s':>8} {'s/image':>8} {'peak RSS MiB':>13}")
    for n in sizes:
        subset = folder / f"subset-{n}"
        shutil.rmtree(subset, ignore_errors=True)
        for path in images[:n]:  # an unlabelled folder of the first n images
            target = subset / f"{path.parent.name}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
        out = folder / f"out-{n}"
        command = [sys.executable, "-m", "alfa_ad", "run", "--method", "musc", "--weights", args.weights,
                   "--data", str(subset), "--class-name", "widget", "--out", str(out), "--no-overlays"]
        wall, peak = child_peak_mib(command, env)
        print(f"{n:7d} {wall:8.1f} {wall / n:8.3f} {peak:13.0f}", flush=True)


if __name__ == "__main__":
    main()
