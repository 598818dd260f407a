"""GPU speed, in one run of under 5 minutes: images/s of every method and aligner at fp32
and at bf16/fp16, over batch sizes, with peak memory and agreement to CPU fp32.

    python benchmarks/speed/gpu.py                        # CUDA if present: ViT-B-16-plus-240, random weights
    python benchmarks/speed/gpu.py --device cpu --weights planted --images 4   # the CPU smoke run
    python benchmarks/speed/gpu.py --json gpu.json --max-seconds 200

Rows: every per-image method (not patchknn, which needs references, nor musc, whose images
score each other) and every aligner in ``alfa_ad.registry`` (``--methods``, ``--aligners``) x
precision x batch size.  Precisions: ``fp32``; ``bf16`` / ``fp16``, fp32 weights under
``torch.autocast``; ``half``, fp16 weights and inputs with no autocast (what
``Detector(device="cuda")`` uses by default: ``ClipBackbone`` halves the model on CUDA).
``--precisions auto`` is ``fp32,bf16,fp16,half`` on CUDA and ``fp32,bf16`` on the CPU
(fp16 on the CPU runs when asked for, to check the code path; its speed means nothing).

The hot loop times ``det.method(pixels, text)`` on preprocessed batches that are already
on the device (``--images`` generated demo images, half of them with a painted spot,
resized once with ``alfa_ad.model.preprocess.resize_to_model``), one warm-up batch first.
``torch.cuda.synchronize()`` runs only before and after the timed loop.  The methods hand
back ``BatchScores`` on the CPU (``.cpu()`` inside ``__call__``), so each batch ends with
one device->host copy of its outputs: one wait per batch, none per image.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset per row (weights
and the input batches included; ``+N`` is what the row added); on the CPU the process's
peak RSS so far (``resource.getrusage``; it only grows, so it is not per row).

Agreement: the first ``--agree-images`` images also go through a CPU fp32 detector with
identical weights, one image at a time (batch size 1); each row's outputs for those images
are compared with them: max |score difference|, max |map difference| (maps at model
resolution) and the Spearman correlation of the scores (n/a below 3 images).  A CPU fp32
row at batch size 1 therefore agrees exactly (0); at larger batch sizes CPU fp32 differs
by rounding only (about 2e-7, other matrix-product blocking).  The device's own resize
(bicubic on CUDA) is part of what is compared, as it is in ``Detector.predict``.

``--max-seconds``: no row (and no CPU reference) starts once this many seconds have passed
since the start; the skipped rows are listed.  Random or planted weights say nothing about
accuracy: the figures are speed and numerical agreement only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", "bf16", "fp16", "half")
CUDA_ONLY = ("fp16", "half")
HOST_SYNCS = "one device->host copy of the outputs per batch (the methods return CPU tensors); none per image"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from alfa_ad.registry import trait
    from alfa_ad.model.names import DEFAULT_MODEL, WEIGHT_CHOICES
    from alfa_ad.registry import ALIGNERS, METHODS

    # per-image methods only: a method that needs references (patchknn) has no zero-shot
    # pass to time here, and a mutual one (musc) scores a batch's images against each
    # other, so its outputs depend on the batch size and cannot be compared image by image
    per_image = [m for m in METHODS.names() if not trait(METHODS.get(m), "needs_normals")
                 and not trait(METHODS.get(m), "mutual")]

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture (ignored for planted and mini)")
    ap.add_argument("--weights", default="random", choices=WEIGHT_CHOICES,
                    help="random (seed 0; default), planted (tiny test model), mini, pretrained (when cached)")
    ap.add_argument("--images", type=int, default=64, help="images per row (default 64)")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--methods", default=",".join(per_image), help=f"of {', '.join(per_image)} (default: all)")
    ap.add_argument("--aligners", default=",".join(ALIGNERS.names()))
    ap.add_argument("--precisions", default="auto", help=f"auto or a list of {', '.join(PRECISIONS)}")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--agree-images", type=int, default=8, help="images compared with CPU fp32 (0: none)")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="start no row after this (default 240)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products in fp32 rows (CUDA)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.methods = [METHODS.check(m.strip()) for m in args.methods.split(",") if m.strip()]
    if set(args.methods) - set(per_image):
        ap.error(f"--methods: {', '.join(sorted(set(args.methods) - set(per_image)))} cannot be timed image by image "
                 f"here; choose from {', '.join(per_image)}")
    args.aligners = [ALIGNERS.check(a.strip()) for a in args.aligners.split(",") if a.strip()]
    if args.images < 1 or not args.batch_sizes or min(args.batch_sizes) < 1:
        ap.error("--images and every batch size must be >= 1")
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                               else args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    auto = ("fp32", "bf16", "fp16", "half") if args.device.type == "cuda" else ("fp32", "bf16")
    args.precisions = list(auto) if args.precisions == "auto" else \
        [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in args.precisions if p not in PRECISIONS]
    if bad:
        ap.error(f"unknown precision {bad[0]!r}; choose from auto, {', '.join(PRECISIONS)}")
    return args


# ---------------------------------------------------------------- devices and memory
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None: it can)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


# ---------------------------------------------------------------- inputs and models
def demo_crops(count: int) -> list[torch.Tensor]:
    """``count`` generated demo images as uint8 ``(3, H, W)``, plain and spotted interleaved
    (so the first few images, those compared with CPU fp32, include both)."""
    from alfa_ad.backends.agreement import check_images
    from alfa_ad.model.preprocess import image_to_tensor

    images, _ = check_images(None, count)  # sorted: the plain ones, then those with a spot
    plain, spotted = images[: count - count // 2], images[count - count // 2:]
    order = [im for pair in zip(plain, spotted) for im in pair] + plain[len(spotted):]
    return [image_to_tensor(im) for im in order]


def to_model(crops: list[torch.Tensor], bb) -> torch.Tensor:
    from alfa_ad.model.preprocess import resize_to_model

    return resize_to_model(crops, bb.image_size, bb.mean, bb.std, bb.device, bb.dtype)


class Models:
    """The CPU fp32 reference backbone and the device's copies of it (fp32; fp16 for ``half``),
    with one detector per (backbone, method, aligner) sharing that backbone's text cache."""

    def __init__(self, args: argparse.Namespace) -> None:
        from alfa_ad.model import load_backbone

        self.device = args.device
        self.reference = load_backbone(args.model, weights=args.weights, seed=0, device="cpu", half=False)
        self._backbones: dict[str, Any] = {"cpu": self.reference}
        self._caches: dict[str, Any] = {}
        self._detectors: dict[tuple, Any] = {}

    def backbone(self, key: str):
        """``cpu`` (the reference), ``fp32`` or ``half`` (on the device); identical weights."""
        from alfa_ad.model.backbone import ClipBackbone

        if key == "fp32" and self.device.type == "cpu":
            key = "cpu"  # the reference itself
        if key not in self._backbones:
            ref = self.reference
            self._backbones[key] = ClipBackbone(copy.deepcopy(ref.clip), ref.tokenizer, ref.weights, self.device,
                                                half=key == "half")
        return self._backbones[key]

    def detector(self, key: str, method: str, aligner: str):
        from alfa_ad import Detector
        from alfa_ad.model.text_cache import TextEmbeddingCache

        bb = self.backbone(key)
        name = "cpu" if bb is self.reference else key
        if (name, method, aligner) not in self._detectors:
            det = Detector(backbone=bb, method=method, aligner=aligner, cache_dir=None)
            det.text_cache = self._caches.setdefault(name, TextEmbeddingCache(None))  # prompts encoded once
            self._detectors[name, method, aligner] = det
        return self._detectors[name, method, aligner]


# ---------------------------------------------------------------- measuring
def timed_pass(det, batches: list[torch.Tensor], text, precision: str, device: torch.device):
    """Seconds of one pass over ``batches`` after one warm-up batch, and the outputs."""
    dtype = AUTOCAST.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        det.method(batches[0], text)  # warm-up: kernels, allocator, autotuning
        sync(device)
        start = time.perf_counter()
        outs = [det.method(pixels, text) for pixels in batches]  # no host sync here but the .cpu() per batch
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, outs


def cpu_reference(models: Models, method: str, aligner: str, pixels: torch.Tensor, class_name: str):
    """Scores and maps of the CPU fp32 detector on ``pixels``, one image at a time."""
    from alfa_ad.methods.base import BatchScores

    det = models.detector("cpu", method, aligner)
    text = det.class_text(class_name)
    outs = [det.method(pixels[i:i + 1], text) for i in range(pixels.shape[0])]
    return BatchScores(torch.cat([o.scores for o in outs]), None, torch.cat([o.maps for o in outs]), None, None)


def measure_row(models: Models, spec: tuple, pixels: dict, reference, args) -> dict[str, Any]:
    """One (method, aligner, precision, batch size) row: speed, memory, agreement."""
    from alfa_ad.backends.agreement import compare
    from alfa_ad.methods.base import BatchScores

    method, aligner, precision, batch = spec
    device = args.device
    det = models.detector("half" if precision == "half" else "fp32", method, aligner)
    text = det.class_text("object")
    inputs = pixels["half" if precision == "half" else "fp32"]
    batches = [inputs[i:i + batch] for i in range(0, inputs.shape[0], batch)]  # views: no copies in the loop
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    seconds, outs = timed_pass(det, batches, text, precision, device)
    row = {"method": method, "aligner": aligner, "precision": precision, "batch_size": batch,
           "images": inputs.shape[0], "batches": len(batches), "seconds": seconds,
           "images_per_s": inputs.shape[0] / seconds, "ms_per_image": 1000 * seconds / inputs.shape[0]}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        row.update(peak_mib=peak / 2**20, row_mib=(peak - base) / 2**20, memory="cuda max_memory_allocated")
    else:
        row.update(peak_mib=rss_peak_mib(), row_mib=None, memory="process peak RSS so far")
    row["agreement"] = None
    if reference is not None:
        k = reference.scores.shape[0]
        got = BatchScores(torch.cat([o.scores for o in outs])[:k], None, torch.cat([o.maps for o in outs])[:k],
                          None, None)
        row["agreement"] = compare(reference, got, "CPU fp32, batch size 1").as_dict()
    return row


# ---------------------------------------------------------------- output
def header(args: argparse.Namespace, models: Models) -> dict[str, Any]:
    info = models.reference.weights
    head = {"device": device_name(args.device), "device_type": args.device.type, "torch": torch.__version__,
            "cuda": torch.version.cuda, "model": info.model_name, "weights": info.source, "weights_label": info.label,
            "images": args.images, "image_size": list(models.reference.image_size),
            "agree_images": min(args.agree_images, args.images), "batch_sizes": args.batch_sizes,
            "precisions": args.precisions, "tf32": torch.backends.cuda.matmul.allow_tf32,
            "max_seconds": args.max_seconds, "host_syncs": HOST_SYNCS}
    print(f"device   {head['device']}   torch {head['torch']}" + (f"   CUDA {head['cuda']}" if head["cuda"] else ""))
    print(f"model    {head['model']}, {info.source} weights ({info.label})", end="")
    print(": figures are speed and agreement only, nothing about accuracy" if info.source in ("random", "planted")
          else "")
    print(f"images   {args.images} generated, {head['image_size'][0]}x{head['image_size'][1]} at the model;"
          f" {head['agree_images']} compared with CPU fp32 (batch size 1)")
    print(f"syncs    {HOST_SYNCS}")
    if args.device.type == "cuda":
        print(f"memory   torch.cuda.max_memory_allocated per row (+ what the row added); TF32 {head['tf32']}")
    else:
        print("memory   peak RSS of the process so far (it only grows: not per row)")
    return head


def format_row(row: dict[str, Any]) -> str:
    mem = f"{row['peak_mib']:8.0f} MiB" + (f" (+{row['row_mib']:.0f})" if row["row_mib"] is not None else "")
    text = (f"{row['method']:8} {row['aligner']:7} {row['precision']:5} {row['batch_size']:4d} "
            f"{row['images_per_s']:10.2f} {row['ms_per_image']:10.2f}  {mem:22}")
    agree = row["agreement"]
    if agree is None:
        return text + "  -"
    rho = "n/a" if agree["spearman"] is None else f"{agree['spearman']:.4f}"
    return text + f"  {agree['max_score_difference']:.1e}  {agree['max_map_difference']:.1e}  {rho}"


def _clean(value: Any) -> Any:
    """NaN/inf -> None, so the JSON file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    args = parse_args(argv)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    models = Models(args)
    head = header(args, models)
    crops = demo_crops(args.images)
    pixels = {"fp32": to_model(crops, models.backbone("fp32"))}
    if "half" in args.precisions:
        pixels["half"] = to_model(crops, models.backbone("half"))
    reference_pixels = to_model(crops[: args.agree_images], models.reference)
    rows, skipped, notes = [], [], []
    print(f"\n{'method':8} {'aligner':7} {'prec':5} {'bs':>4} {'images/s':>10} {'ms/image':>10}  "
          f"{'peak memory':22}  max|dscore| max|dmap| spearman")
    for method in args.methods:
        for aligner in args.aligners:
            reference = None
            for precision in args.precisions:
                problem = precision_problem(precision, args.device)
                if problem or (precision in CUDA_ONLY and args.device.type == "cpu"):
                    notes.append(f"{precision} on {args.device.type}: " +
                                 (problem or "CUDA precision, run on the CPU only to check the code path"))
                if problem:
                    continue
                for batch in args.batch_sizes:
                    spec = (method, aligner, precision, batch)
                    if time.perf_counter() - start > args.max_seconds:
                        skipped.append(dict(zip(("method", "aligner", "precision", "batch_size"), spec)))
                        continue
                    if reference is None and args.agree_images > 0:
                        reference = cpu_reference(models, method, aligner, reference_pixels, "object")
                    rows.append(measure_row(models, spec, pixels, reference, args))
                    print(format_row(rows[-1]), flush=True)
    total = time.perf_counter() - start
    if skipped:
        print(f"\nbudget of {args.max_seconds:.0f} s spent: {len(skipped)} rows skipped (from "
              f"{'/'.join(str(v) for v in skipped[0].values())} on)")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print(f"total {total:.1f} s")
    result = {"header": head, "rows": rows, "skipped": skipped, "notes": list(dict.fromkeys(notes)),
              "total_seconds": total}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(result), indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
