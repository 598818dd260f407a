"""Few-shot fit and leave-one-out calibration time, and the memory a fitted Detector holds.

    python benchmarks/speed/few_shot_fit_cost.py --data ../shared/data/mpdd/metal_plate/train/good
    python benchmarks/speed/few_shot_fit_cost.py --memory 200 --data ../shared/data/mpdd/metal_plate/train/good

Random weights of the default model (speed and memory do not depend on weight values);
``--weights planted``: the small planted test model (width 64, 3 blocks).
``fit`` = ``Detector.fit_normals`` on every image of ``--data`` (``--shots all``), with the
CLI's default coreset (4096); ``calibrate`` = ``Detector.calibrate(None)`` (leave-one-out
over the references).  Wall seconds and CPU seconds (``time.process_time``, all threads:
the robust figure on a shared, loaded machine).  ``--memory N`` fits N normals (the folder's images repeated, each
copy made distinct by a one-pixel change) and reports the bytes of the tensors, arrays
and decoded images the Detector holds afterwards (gc-reachable from it), the part of it
that is the leave-one-out references' zero-shot features, the process's resident memory
before and after the fit, and its peak.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alfa_ad import Detector


def held_bytes(root) -> int:
    """Bytes of tensor storages, numpy arrays and PIL images reachable from ``root`` (each counted once)."""
    seen, total, stack = set(), 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(sys))):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            key = ("storage", obj.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += obj.untyped_storage().nbytes()
            continue
        if isinstance(obj, np.ndarray):
            total += obj.nbytes
            continue
        if isinstance(obj, Image.Image):
            total += len(obj.tobytes()) if obj.im is not None else 0
            continue
        if isinstance(obj, torch.nn.Module):
            continue  # the model's weights are not the references' cost
        if isinstance(obj, dict):
            stack += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
        elif hasattr(obj, "__slots__"):
            stack += [getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)]
    return total


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--memory", type=int, default=0, help="fit this many normals and report held memory")
    ap.add_argument("--method", default="alfa")
    ap.add_argument("--weights", default="random", help="random (default model) or planted (the small test model)")
    ap.add_argument("--coreset", type=int, default=4096)
    ap.add_argument("--extra", default="", help="extra Detector options, k=v,k=v (e.g. few_shot_scorer=residual)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    extra = dict(kv.split("=", 1) for kv in args.extra.split(",") if kv)
    det = Detector(weights=args.weights, method=args.method, cache_dir=None, llm_prompts=False, **extra)
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    fit_kwargs = {"coreset": args.coreset, "seed": 0}
    if "class_name" in Detector.fit_normals.__code__.co_varnames:
        fit_kwargs["class_name"] = "metal plate"
    if args.memory:
        images = []
        for i in range(args.memory):
            a = np.asarray(Image.open(files[i % len(files)]).convert("RGB")).copy()
            a[0, 0, 0] = (int(a[0, 0, 0]) + i // len(files)) % 256
            images.append(Image.fromarray(a))
        base = held_bytes(det)
        gc.collect()
        rss_before = rss_mb()
        t = time.perf_counter()
        det.fit_normals(images, **fit_kwargs)
        fit_s = time.perf_counter() - t
        del images
        gc.collect()
        loo = getattr(det, "_loo", None)
        loo_mb = f"{loo.nbytes / 2**20:.1f}" if loo is not None else "n/a"
        print(f"normals={args.memory} fit_s={fit_s:.1f} held_MB={(held_bytes(det) - base) / 2**20:.1f} "
              f"(leave-one-out features {loo_mb} MB) bank_size={det.method.bank_size} "
              f"rss_before_fit_MB={rss_before:.0f} rss_after_MB={rss_mb():.0f} "
              f"peak_rss_MB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
        return
    t, c = time.perf_counter(), time.process_time()
    det.fit_normals(files, **fit_kwargs)
    fit_s, fit_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    th = det.calibrate(None, "metal plate", 0.01)
    cal_s, cal_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"references={len(files)} fit_s={fit_s:.1f} (cpu {fit_cpu:.1f}) calibrate_s={cal_s:.1f} (cpu {cal_cpu:.1f}) "
          f"n_images={th.n_images} "
          f"image_threshold={th.image:.4f} pixel_threshold={th.pixel:.4f}")


if __name__ == "__main__":
    main()
