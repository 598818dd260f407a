"""Batch runs over a dataset: scores, overlays and metrics written as they come."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .detector import DetectionResult, Detector
from .evaluation.metrics import EVAL_SIZE, summarize
from .io.atomic import atomic_write_text
from .io.datasets import Sample
from .io.images import ImageLoadError, load_image, load_mask
from .report import ClassOverlayWriter, write_report  # issue 13: per-class overlays, report.html

CSV_FIELDS = ("class", "path", "defect_type", "label", "score", "decision", "global_score", "map_max",
              "kept_normal", "kept_abnormal", "total_normal", "total_abnormal", "method", "weights")
METRICS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pro", "pixel_f1_max")
METRIC_TITLES = {"image_auroc": "img AUROC", "image_aupr": "img AUPR", "image_f1_max": "img F1-max",
                 "pixel_auroc": "px AUROC", "pro": "PRO", "pixel_f1_max": "px F1-max"}


@dataclass
class ClassEval:
    """What one class contributes to metrics (maps and masks at EVAL_SIZE)."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def metrics(self) -> dict[str, float | None]:
        masks = np.stack(self.masks) if self.masks else None
        maps = np.stack(self.maps) if self.maps else None
        return summarize(self.labels, self.scores, masks, maps)


@dataclass
class RunReport:
    out: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-class facts: prompts, thresholds
    seconds: float = 0.0

    def write(self) -> None:
        """(Re)write scores.csv/json and metrics.json/csv/md atomically."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.out / "scores.csv", buf.getvalue())
        header = {"alfa_ad_version": __version__, "weights": self.config.get("weights"), "config": self.config}
        atomic_write_text(self.out / "scores.json", json.dumps(
            {**header, "images": self.rows, "errors": self.errors, "warnings": self.warnings}, indent=1))
        if not self.metrics:  # nothing measurable: no stale metrics of an earlier run may stay
            for name in ("metrics.json", "metrics.csv", "metrics.md"):
                (self.out / name).unlink(missing_ok=True)
            return
        atomic_write_text(self.out / "metrics.json", json.dumps(
            {**header, "metrics": self.metrics, "mean": self.mean_metrics(), "classes": self.classes,
             "n_images": len(self.rows), "n_errors": len(self.errors), "seconds": round(self.seconds, 2)}, indent=1))
        table = metrics_table(self.metrics, self.mean_metrics())
        buf = io.StringIO()
        csv.writer(buf).writerows(table)
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())
        atomic_write_text(self.out / "metrics.md", markdown_table(table, self.config))

    def mean_metrics(self) -> dict[str, float | None]:
        return mean_over(self.metrics.values())


def mean_over(items) -> dict[str, float | None]:
    """Mean of each metric over the classes where it is defined (None if nowhere)."""
    items = list(items)
    out: dict[str, float | None] = {}
    for name in METRICS:
        vals = [m[name] for m in items if m.get(name) is not None]
        out[name] = float(np.mean(vals)) if vals else None
    return out


def fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "undefined"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def metrics_table(per_class: dict[str, dict], mean: dict | None) -> list[list[str]]:
    """Rows ``[class, metric...]`` in percent, plus a ``mean`` row when there are several classes."""
    rows = [["class", *[METRIC_TITLES[m] for m in METRICS]]]
    for cls, m in per_class.items():
        rows.append([cls, *[fmt(m.get(k)) for k in METRICS]])
    if mean is not None and len(per_class) > 1:
        rows.append(["mean", *[fmt(mean.get(k)) for k in METRICS]])
    return rows


def markdown_table(rows: list[list[str]], config: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    cfg = ", ".join(f"{k}: {v}" for k, v in config.items() if k not in ("weights_source",))
    return (f"# alfa-ad results\n\nWeights: {config.get('weights')}\n\n" + "\n".join(lines)
            + f"\n\nValues in percent. Configuration: {cfg}\n")


def _eval_resize(amap: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
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


Prepare = Callable[[Detector, str], dict[str, Any]]


def run_dataset(
    detector: Detector,
    dataset: dict[str, list[Sample]],
    out: Path,
    config: dict[str, Any],
    *,
    overlays: bool = True,
    overlay_scale: str = "class",
    explain: int = 0,
    warnings: Sequence[str] = (),
    prepare: Prepare | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> RunReport:
    """Score every sample, writing overlays as it goes and score files after every class.

    ``warnings`` (e.g. from dataset discovery) go into every written report.
    ``prepare(detector, class_name)`` runs before each class (few-shot: fit the
    memory bank, calibrate) and returns facts for the report; raising
    ``ImageLoadError``/``ValueError`` there skips the class with the error recorded.
    Overlays of a class are written after its last image, on one colour scale
    (``overlay_scale="class"``; ``"image"``: each image's own range); ``report.html`` at the end.
    """
    out.mkdir(parents=True, exist_ok=True)
    report = RunReport(out, config, warnings=list(warnings))
    banner = None if detector.backbone.weights.meaningful else detector.weights_label
    t0 = time.perf_counter()
    for class_name, samples in dataset.items():
        facts: dict[str, Any] = {"prompt_sources": detector.prompts(class_name).sources}
        if "llm" not in facts["prompt_sources"] and any(s.name == "llm" for s in detector.sources):
            report.warnings.append(f"class {class_name!r}: no LLM prompts in the prompt libraries; "
                                   "templates only")
        if prepare is not None:
            try:
                facts.update(prepare(detector, class_name))
            except (ImageLoadError, ValueError) as exc:
                report.errors.append(f"class {class_name!r} skipped: {exc}")
                if on_error:
                    on_error(report.errors[-1])
                continue
        ev = ClassEval()
        maps = ClassOverlayWriter(out, class_name, scale=overlay_scale, render=overlays,
                                  thresholds=facts.get("thresholds"), banner=banner)
        kept: list[tuple[int, int]] = []
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
            results = detector.predict(images, class_name, explain=explain) if images else []
            for s, im, r in zip(batch, images, results):
                _record(report, ev, s, im, r, maps)
                kept.append((len(r.kept_prompts["normal"]), len(r.kept_prompts["abnormal"])))
            done += len(samples[start : start + detector.batch_size])
            if on_progress:
                on_progress(class_name, done, len(samples))
        if kept:
            facts["mean_prompts_kept"] = {"normal": float(np.mean([k[0] for k in kept])),
                                          "abnormal": float(np.mean([k[1] for k in kept]))}
        maps.finish()
        report.warnings.extend(maps.warnings)
        report.classes[class_name] = facts
        if ev.labels:
            report.metrics[class_name] = ev.metrics()
        report.seconds = time.perf_counter() - t0
        report.write()
    report.seconds = time.perf_counter() - t0
    report.write()
    write_report(out)
    return report


def _record(report: RunReport, ev: ClassEval, s: Sample, im: Image.Image, r: DetectionResult,
            maps: ClassOverlayWriter) -> None:
    mask = _mask_for(s, im.size, report) if s.label is not None else None
    maps.add(s.key, s.path, r.anomaly_map, mask, score=r.score, image=im)
    if s.label is not None:
        ev.labels.append(s.label)
        ev.scores.append(r.score)
        if mask is not None:
            ev.maps.append(_eval_resize(r.anomaly_map))
            ev.masks.append(_eval_resize(mask.astype(np.float32)) >= 0.5)
    row = {"class": s.class_name, "path": str(s.path), "defect_type": s.defect_type,
           "label": "" if s.label is None else s.label, **r.summary(),
           "key": s.key, "kept_prompts": r.kept_prompts}  # for the report (issue 13)
    if r.descriptors:
        row["descriptors"] = [[t, round(v, 4)] for t, v in r.descriptors]
    report.rows.append(row)


def aggregate_seeds(reports: Sequence[RunReport]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean and standard deviation (population, as over the paper's 5 seeds) per class and metric."""
    classes = list(dict.fromkeys(c for r in reports for c in r.metrics))
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for cls in [*classes, "mean"]:
        per = [r.mean_metrics() if cls == "mean" else r.metrics.get(cls, {}) for r in reports]
        out[cls] = {}
        for name in METRICS:
            vals = [m[name] for m in per if m.get(name) is not None]
            out[cls][name] = {"mean": float(np.mean(vals)) if vals else None,
                              "std": float(np.std(vals)) if vals else None, "n": len(vals)}
    return out


def write_seed_summary(out: Path, config: dict[str, Any], seeds: Sequence[int], summary: dict) -> list[list[str]]:
    rows = [["class", *[METRIC_TITLES[m] for m in METRICS]]]
    for cls, m in summary.items():
        if cls == "mean" and len(summary) <= 2:
            continue
        rows.append([cls, *[fmt(m[k]["mean"], m[k]["std"]) for k in METRICS]])
    atomic_write_text(out / "metrics_seeds.json", json.dumps(
        {"alfa_ad_version": __version__, "weights": config.get("weights"), "config": config, "seeds": list(seeds),
         "metrics": summary}, indent=1))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(out / "metrics_seeds.csv", buf.getvalue())
    atomic_write_text(out / "metrics_seeds.md", markdown_table(rows, {**config, "seeds": list(seeds)}).replace(
        "Values in percent.", "Values in percent, mean ± standard deviation over seeds."))
    return rows
