"""Batch runs over a dataset: scores, overlays and metrics written as they come."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .detector import DetectionResult, Detector
from .evaluation.metrics import EVAL_SIZE, image_auroc, pixel_auroc
from .io.atomic import atomic_save_image, atomic_write_text
from .io.datasets import Sample
from .io.images import ImageLoadError, load_image, load_mask
from .io.overlay import render_overlay

CSV_FIELDS = ("class", "path", "defect_type", "label", "score", "global_score", "map_max", "kept_normal",
              "kept_abnormal", "total_normal", "total_abnormal", "method", "weights")


@dataclass
class ClassEval:
    """What one class contributes to metrics (maps and masks at EVAL_SIZE)."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def metrics(self) -> dict[str, float | None]:
        pix = pixel_auroc(np.stack(self.masks), np.stack(self.maps)) if self.masks else None
        return {"image_auroc": image_auroc(self.labels, self.scores), "pixel_auroc": pix}


@dataclass
class RunReport:
    out: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    seconds: float = 0.0

    def write(self) -> None:
        """(Re)write scores.csv, scores.json and metrics.json atomically."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.out / "scores.csv", buf.getvalue())
        header = {"alfa_ad_version": __version__, "weights": self.config.get("weights"), "config": self.config}
        atomic_write_text(self.out / "scores.json", json.dumps(
            {**header, "images": self.rows, "errors": self.errors, "warnings": self.warnings}, indent=1))
        atomic_write_text(self.out / "metrics.json", json.dumps(
            {**header, "metrics": self.metrics, "mean": self.mean_metrics(), "n_images": len(self.rows),
             "n_errors": len(self.errors), "seconds": round(self.seconds, 2)}, indent=1))

    def mean_metrics(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in ("image_auroc", "pixel_auroc"):
            vals = [m[name] for m in self.metrics.values() if m.get(name) is not None]
            out[name] = float(np.mean(vals)) if vals else None
        return out


def _eval_resize(amap: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(amap)[None, None]
    return F.interpolate(t, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()


def _mask_for(sample: Sample, size: tuple[int, int], report: RunReport) -> np.ndarray | None:
    """Ground truth at the image's (W, H) size: zeros for good images, None when unknown."""
    if sample.label == 0:
        return np.zeros((size[1], size[0]), dtype=bool)
    if sample.mask_path is None:
        return None
    try:
        mask = load_mask(sample.mask_path)
    except ImageLoadError as exc:
        report.warnings.append(f"{exc}; image counted for image metrics only")
        return None
    if mask.shape != (size[1], size[0]):
        report.warnings.append(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                               f"{size[0]}x{size[1]}; image counted for image metrics only")
        return None
    return mask


def run_dataset(
    detector: Detector,
    dataset: dict[str, list[Sample]],
    out: Path,
    config: dict[str, Any],
    *,
    overlays: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> RunReport:
    """Score every sample, writing overlays as it goes and score files after every class."""
    out.mkdir(parents=True, exist_ok=True)
    report = RunReport(out, config)
    banner = None if detector.backbone.weights.meaningful else detector.weights_label
    t0 = time.perf_counter()
    for class_name, samples in dataset.items():
        ev = ClassEval()
        done = 0
        for start in range(0, len(samples), detector.batch_size):
            batch, images = [], []
            for s in samples[start : start + detector.batch_size]:
                try:
                    images.append(load_image(s.path))
                    batch.append(s)
                except ImageLoadError as exc:
                    report.errors.append(str(exc))
                    if on_error:
                        on_error(str(exc))
            results = detector.predict(images, class_name) if images else []
            for s, im, r in zip(batch, images, results):
                _record(report, ev, s, im, r, out, overlays, banner)
            done += len(samples[start : start + detector.batch_size])
            if on_progress:
                on_progress(class_name, done, len(samples))
        if ev.labels:
            report.metrics[class_name] = ev.metrics()
        report.seconds = time.perf_counter() - t0
        report.write()
    report.seconds = time.perf_counter() - t0
    report.write()
    return report


def _record(report: RunReport, ev: ClassEval, s: Sample, im: Image.Image, r: DetectionResult, out: Path,
            overlays: bool, banner: str | None) -> None:
    mask = _mask_for(s, im.size, report) if s.label is not None else None
    if overlays:
        lo, hi = float(r.anomaly_map.min()), float(r.anomaly_map.max())
        text = f"score {r.score:.3f} | colours span map range {lo:.3f}-{hi:.3f}" + (f" | {banner}" if banner else "")
        atomic_save_image(out / "overlays" / f"{s.key}.png",
                          render_overlay(im, r.anomaly_map, vmin=lo, vmax=max(hi, lo + 1e-6), banner=text,
                                         mask=mask if s.label else None))
    if s.label is not None:
        ev.labels.append(s.label)
        ev.scores.append(r.score)
        if mask is not None:
            ev.maps.append(_eval_resize(r.anomaly_map))
            ev.masks.append(_eval_resize(mask.astype(np.float32)) >= 0.5)
    report.rows.append({"class": s.class_name, "path": str(s.path), "defect_type": s.defect_type,
                        "label": "" if s.label is None else s.label, **r.summary()})
