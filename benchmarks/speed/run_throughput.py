"""End-to-end throughput and memory of a batch run.

    python benchmarks/speed/run_throughput.py                       # both parts below, CPU
    python benchmarks/speed/run_throughput.py --part speed --images 64
    python benchmarks/speed/run_throughput.py --part memory --sizes 500,5000
    python benchmarks/speed/run_throughput.py --part speed --backend onnxruntime --precision int8

* ``speed``: ViT-B-16-plus-240 (random weights) over ``--images`` real test images from
  ../shared/data, labelled and with their masks (repeated when there are fewer): images/s
  of the whole run (``alfa-ad run``: decode -> model -> maps -> score files, overlays,
  metrics, report) against images/s of the model step alone (``Detector.method`` on preprocessed batches
  of the same batch size), and their ratio (target >= 0.9).  The two figures come from
  different processes at different moments; ``--accounting`` adds a run that times the
  model step where the run calls it, so both figures share the run's conditions.
* ``memory``: peak RSS of the whole ``alfa-ad run`` process at each of ``--sizes``
  images (the same labelled files and masks repeated under distinct names, planted model
  so that it runs in minutes; image and pixel metrics, overlays and report written), and
  the ratio of the largest to the smallest (target <= 1.1).

Every figure is printed; nothing is asserted.  Random weights: speed does not depend on
the weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real_samples() -> list:
    """Every test image under ../shared/data with its label and mask (``io.datasets.Sample``)."""
    from alfa_ad.io.datasets import discover

    out = []
    for root in sorted(p for p in DATA.iterdir() if p.is_dir()):
        dataset, _ = discover(root)
        out += [s for samples in dataset.values() for s in samples]
    if not out:
        sys.exit(f"no images under {DATA}")
    return out


def folder_of(n: int, samples: list, where: Path) -> Path:
    """An MVTec-layout dataset of ``n`` test images, one class (``parts``), made of symbolic
    links to ``samples`` repeated under distinct names, with their labels and masks, so the
    run computes image and pixel metrics as on a real dataset."""
    cls = where / "parts"
    for i in range(n):
        s = samples[i % len(samples)]
        kind = "good" if s.label == 0 else "defect"
        link = cls / "test" / kind / f"{i:06d}{s.path.suffix.lower()}"
        if link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(s.path.resolve())
        if kind == "defect" and s.mask_path is not None:
            mask = cls / "ground_truth" / kind / f"{i:06d}_mask{s.mask_path.suffix.lower()}"
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.symlink_to(s.mask_path.resolve())
    return where


def timed_run(args: list[str], env: dict) -> tuple[float, float, float | None]:
    """Wall seconds and peak RSS (MB) of one ``alfa-ad`` process, and the seconds of its
    scoring loop as the run reports them (first class started to last file written: no
    imports, model build or report)."""
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter();"
             "p = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t;"
             "print(json.dumps([p.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    res = subprocess.run([sys.executable, "-c", probe, "alfa-ad", *args], env=env, capture_output=True, text=True)
    rc, wall, peak = json.loads(res.stdout.strip().splitlines()[-1])
    if rc != 0:
        sys.exit(f"alfa-ad {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    loop = re.search(r"([0-9.]+) s;\s+outputs\s+in", res.stdout + res.stderr)
    return wall, peak, float(loop.group(1)) if loop else None


def model_only(n: int, batch: int, files: list, backend: str = "torch", precision: str = "fp32",
               cache: Path | None = None) -> float:
    import torch

    from alfa_ad import Detector
    from alfa_ad.io.images import load_image

    det = Detector(weights="random", cache_dir=cache or None, llm_prompts=False, batch_size=batch, tile="none")
    det.use_backend(backend, precision=precision)  # the export the run wrote into the cache
    forward = det.backend or det.method
    text = det.class_text("object")
    images = [load_image(files[i % len(files)].path) for i in range(batch)]
    pixels = det.backbone.preprocess(images)
    forward(pixels, text)  # warm-up
    t = time.perf_counter()
    done = 0
    while done < n:
        forward(pixels, text)
        done += batch
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return done / (time.perf_counter() - t)


ACCOUNTING = """
import json, sys, time
from alfa_ad.backends.base import ExportedBackend
from alfa_ad.methods.alfa import AlfaMethod
spent = [0.0, 0]
def timed(call):
    def wrapper(self, pixels, *args, **kwargs):
        t = time.perf_counter()
        try:
            return call(self, pixels, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t
            spent[1] += 1
    return wrapper
AlfaMethod.__call__ = timed(AlfaMethod.__call__)
ExportedBackend.__call__ = timed(ExportedBackend.__call__)
from alfa_ad.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
print(json.dumps({"model_seconds": spent[0], "model_calls": spent[1]}))
"""


def in_run_accounting(args: list[str], env: dict) -> tuple[float, float]:
    """One ``alfa-ad run`` in a child process with the model step timed where it is called
    (the method's or the exported backend's ``__call__``): seconds in the model step and
    seconds of the scoring loop, under the same conditions (the run's other threads,
    the machine's state at that moment)."""
    res = subprocess.run([sys.executable, "-c", ACCOUNTING, *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"alfa-ad {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    model = json.loads(res.stdout.strip().splitlines()[-1])["model_seconds"]
    loop = re.search(r"([0-9.]+) s;\s+outputs\s+in", res.stdout + res.stderr)
    return model, float(loop.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("speed", "memory", "both"), default="both")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sizes", default="500,5000")
    ap.add_argument("--backend", default="torch", help="torch, onnxruntime or openvino (speed part)")
    ap.add_argument("--precision", default="fp32", help="fp32 or int8 (exported backends)")
    ap.add_argument("--accounting", action="store_true",
                    help="speed part: one more run that times the model step inside the run (same conditions)")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "alfa-ad-throughput"))
    args = ap.parse_args()
    files = real_samples()
    base = Path(args.folder)
    env = {**os.environ, "ALFA_AD_CACHE": str(base / "cache")}
    if args.part in ("speed", "both"):
        data = folder_of(args.images, files, base / f"labelled-{args.images}")
        run_args = ["run", "--data", str(data), "--out", str(base / "out-speed"), "--weights", "random", "--no-llm",
                    "--tile", "none", "--batch-size", str(args.batch_size), "--backend", args.backend,
                    "--precision", args.precision]
        wall, peak, loop = timed_run(run_args, env)
        e2e = args.images / wall
        model = model_only(args.images, args.batch_size, files, args.backend, args.precision, base / "cache")
        steady = f"; scoring loop alone {args.images / loop:.2f} images/s, ratio {args.images / loop / model:.2f}" \
            if loop else ""
        print(f"speed (ViT-B-16-plus-240, {args.backend} {args.precision}, {args.images} images, batch "
              f"{args.batch_size}): model step alone {model:.2f} images/s; whole process (start-up, decode -> "
              f"report) {e2e:.2f} images/s in {wall:.1f} s, ratio {e2e / model:.2f}{steady}; peak RSS {peak:.0f} MB")
        if args.accounting:
            in_model, loop = in_run_accounting(run_args[:4] + [str(base / "out-accounting")] + run_args[5:], env)
            print(f"in-run accounting (a second run): model step {in_model:.1f} s of the {loop:.1f} s scoring loop, "
                  f"ratio {in_model / loop:.2f} ({args.images / in_model:.2f} vs {args.images / loop:.2f} images/s)")
    if args.part in ("memory", "both"):
        sizes = [int(s) for s in args.sizes.split(",")]
        peaks = {}
        for n in sizes:
            data = folder_of(n, files, base / f"labelled-{n}")
            wall, peak, _ = timed_run(["run", "--data", str(data), "--out", str(base / f"out-mem-{n}"), "--weights",
                                    "planted", "--no-llm", "--batch-size", str(args.batch_size)], env)
            peaks[n] = peak
            print(f"memory: {n} images (planted model, overlays and report written): peak RSS {peak:.0f} MB, "
                  f"{wall:.0f} s")
        lo, hi = min(sizes), max(sizes)
        print(f"peak RSS {hi} vs {lo} images: {peaks[hi] / peaks[lo]:.3f}x (target <= 1.10)")


if __name__ == "__main__":
    main()
