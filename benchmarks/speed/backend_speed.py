"""Model-step speed of the backends: torch vs ONNX Runtime vs OpenVINO, fp32 and int8.

    python benchmarks/speed/backend_speed.py                                  # ViT-B-16-plus-240, random weights
    python benchmarks/speed/backend_speed.py --model ViT-S-32 --images 32 --batch-size 8

Exports the detector (ALFA, default aligner, random weights) once per format and
precision into ``--folder``, then times ``Detector.backend(pixels, text)`` on the same
preprocessed batch (``--batch-size`` real test images from ../shared/data, or random
pixels when absent) for ``--images`` images after one warm-up batch, and prints images/s,
the ratio to torch, and each backend's agreement with torch on that batch (max |score
difference|, max |map difference|, Spearman rank correlation of the scores).  Random
weights: speed does not depend on the weight values; agreement does, a little (int8).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--aligner", default=None)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backends", default="torch,onnxruntime:fp32,openvino:fp32,onnxruntime:int8,openvino:int8")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "alfa-ad-backends"))
    args = ap.parse_args()
    from alfa_ad import Detector
    from alfa_ad.backends.agreement import compare
    from alfa_ad.export import export_detector
    from alfa_ad.export.writer import write_onnx
    from alfa_ad.backends import create_backend

    options = {"aligner": args.aligner} if args.aligner else {}
    det = Detector(model=args.model, weights="random", device="cpu", cache_dir=None, llm_prompts=False, tile="none",
                   batch_size=args.batch_size, **options)
    text = det.class_text("object")
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    files = sorted(p for p in data.rglob("*.png") if "ground_truth" not in p.parts)[: args.batch_size] \
        if data.is_dir() else []
    if len(files) == args.batch_size:
        from alfa_ad.io.images import load_image

        pixels = det.backbone.preprocess([load_image(f) for f in files])
        source = "real test images"
    else:
        pixels = torch.rand(args.batch_size, 3, *det.backbone.image_size)
        source = "random pixels"
    folder = Path(args.folder) / f"{args.model}-{det.config.aligner}"
    folder.mkdir(parents=True, exist_ok=True)
    traced = folder / "traced.onnx"
    if not traced.is_file():
        t = time.perf_counter()
        write_onnx(det, traced)
        print(f"traced to ONNX in {time.perf_counter() - t:.0f} s ({traced.stat().st_size / 2**20:.0f} MB)")
    ref = det.method(pixels, text)
    base = None
    for spec in args.backends.split(","):
        name, _, precision = spec.partition(":")
        precision = precision or "fp32"
        if name == "torch":
            backend = create_backend("torch", det)
        else:
            fmt = "onnx" if name == "onnxruntime" else "openvino"
            out = folder / f"{fmt}-{precision}"
            if not (out / "manifest.json").is_file():
                t = time.perf_counter()
                export_detector(det, out, fmt, precision, traced=traced)
                print(f"exported {fmt} {precision} in {time.perf_counter() - t:.0f} s")
            backend = create_backend(name, det, out)
        got = backend(pixels, text)  # warm-up (and agreement)
        t = time.perf_counter()
        done = 0
        while done < args.images:
            backend(pixels, text)
            done += args.batch_size
        speed = done / (time.perf_counter() - t)
        base = base or speed
        agreement = compare(ref, got, source)
        print(f"{name:12s} {precision}: {speed:6.2f} images/s ({speed / base:.2f}x torch), {agreement.describe()} "
              f"({args.model}, batch {args.batch_size}, {done} images, {torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()
