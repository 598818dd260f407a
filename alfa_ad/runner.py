"""The local engine: score a dataset class by class, feeding every result to the run's files.

``run_dataset`` is the one result stream of a batch run: for each class it fits
references and thresholds (``prepare``), loads and scores images in batches,
hands each result to :class:`~alfa_ad.outputs.writers.RunFiles`, and
accumulates what the metrics need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .detector import Detector
from .evaluation.metrics import EVAL_SIZE, summarize
from .io.datasets import Sample
from .io.images import ImageLoadError, load_image, load_mask
from .outputs.record import RunOptions
from .outputs.tables import METRIC_TITLES, METRICS, mean_over  # noqa: F401  (re-exported)
from .outputs.writers import CSV_FIELDS, RunFiles  # noqa: F401  (re-exported)


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
    """What a run did: its record, rows, errors, warnings, metrics and per-class facts."""

    out: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def mean_metrics(self) -> dict[str, float | None]:
        return mean_over(self.metrics.values())

    @property
    def flagged(self) -> tuple[int, int]:
        """(images with an anomalous decision, images with a decision)."""
        decided = [r for r in self.rows if r.get("decision")]
        return sum(r["decision"] == "anomalous" for r in decided), len(decided)


def _eval_resize(amap: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()


def _mask_for(sample: Sample, size: tuple[int, int], warnings: list[str]) -> np.ndarray | None:
    """Ground truth at the image's (W, H) size: zeros for good images, None when unknown."""
    if sample.label == 0:
        return np.zeros((size[1], size[0]), dtype=bool)
    if sample.mask_path is None:
        return None
    try:
        mask = load_mask(sample.mask_path)
    except ImageLoadError as exc:
        warnings.append(f"{exc}; image counted for image metrics only")
        return None
    if mask.shape != (size[1], size[0]):
        warnings.append(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{size[0]}x{size[1]}; image counted for image metrics only")
        return None
    return mask


def decision_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int] | None:
    """Counts at the calibrated threshold: flagged of decided, and the confusion matrix
    where labels are known.  None when no image has a decision."""
    decided = [r for r in rows if r.get("decision")]
    if not decided:
        return None
    flagged = [r["decision"] == "anomalous" for r in decided]
    out = {"images": len(decided), "flagged": int(sum(flagged))}
    labelled = [(r["label"], f) for r, f in zip(decided, flagged) if r.get("label") in (0, 1)]
    if labelled:
        out.update(tp=sum(lab == 1 and f for lab, f in labelled), fp=sum(lab == 0 and f for lab, f in labelled),
                   tn=sum(lab == 0 and not f for lab, f in labelled), fn=sum(lab == 1 and not f for lab, f in labelled))
    return out


Prepare = Callable[[Detector, str, str], dict[str, Any]]


def run_dataset(
    detector: Detector,
    dataset: dict[str, list[Sample]],
    out: Path,
    record: dict[str, Any],
    options: RunOptions,
    *,
    overlays: bool = True,
    warnings: Sequence[str] = (),
    prepare: Prepare | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> RunReport:
    """Score every sample; every result goes to the run's files as it comes.

    ``prepare(detector, class_folder, prompt_name)`` runs before each class (few-shot:
    fit the memory bank, calibrate) and returns facts for the report; raising
    ``ImageLoadError``/``ValueError`` there skips the class with the error recorded.
    """
    files = RunFiles(out, record, overlays=overlays)
    files.warnings += list(warnings)
    report = RunReport(out, record, rows=files.rows, errors=files.errors, warnings=files.warnings)

    def error(message: str) -> None:
        report.errors.append(message)
        if on_error:
            on_error(message)

    t0 = time.perf_counter()
    try:
        for class_name, samples in dataset.items():
            name = options.class_names.get(class_name, class_name)
            facts = _class_facts(detector, class_name, name, options, report.warnings)
            if prepare is not None:
                try:
                    facts.update(prepare(detector, class_name, name))
                except (ImageLoadError, ValueError) as exc:
                    error(f"class {class_name!r} skipped: {exc}")
                    continue
            ev, kept, first_row, done = ClassEval(), [], len(report.rows), 0
            for start in range(0, len(samples), detector.batch_size):
                batch, images = [], []
                for s in samples[start : start + detector.batch_size]:
                    try:
                        images.append(load_image(s.path))
                        batch.append(s)
                    except ImageLoadError as exc:
                        error(str(exc))
                results = detector.predict(images, name, explain=options.explain) if images else []
                for s, im, r in zip(batch, images, results):
                    truth = _mask_for(s, im.size, report.warnings) if s.label is not None else None
                    files.add(s, im, r, truth)
                    _evaluate(ev, s, r, truth)
                    kept.append((len(r.kept_prompts["normal"]), len(r.kept_prompts["abnormal"])))
                done += len(samples[start : start + detector.batch_size])
                if on_progress:
                    on_progress(class_name, done, len(samples))
            if kept:
                facts["mean_prompts_kept"] = {"normal": float(np.mean([k[0] for k in kept])),
                                              "abnormal": float(np.mean([k[1] for k in kept]))}
            counts = decision_counts(report.rows[first_row:])
            if counts:
                facts["decisions"] = counts
            report.classes[class_name] = facts
            if ev.labels:
                report.metrics[class_name] = ev.metrics()
            report.seconds = time.perf_counter() - t0
            files.write(report.metrics, report.classes, report.seconds)
        report.seconds = time.perf_counter() - t0
        files.write(report.metrics, report.classes, report.seconds)
    finally:
        files.close()
    return report


def _class_facts(detector: Detector, class_name: str, prompt_name: str, options: RunOptions,
                 warnings: list[str]) -> dict[str, Any]:
    """Prompt facts of a class (sources as actually used, with counts) and their warnings."""
    facts: dict[str, Any] = {"prompt_sources": detector.prompts(prompt_name).sources}
    if prompt_name != class_name:
        facts["prompt_name"] = prompt_name
    if prompt_name in detector.prompt_classes:
        facts["prompt_class"] = detector.prompt_classes[prompt_name]
    if "llm" not in facts["prompt_sources"] and any(s.name == "llm" for s in detector.sources):
        warnings.append(f"class {class_name!r}: no LLM prompts in the prompt libraries; templates only")
    if "learned" not in facts["prompt_sources"] and any(s.name == "learned" for s in detector.sources):
        warnings.append(f"class {class_name!r}: the learned-prompt file has no prompts for {prompt_name!r}")
    if options.explain:
        n = len(detector.explanation_candidates(prompt_name))
        if n == 0:
            warnings.append(f"class {class_name!r}: no LLM descriptions to explain with; --explain gives nothing")
        elif n < options.explain:
            warnings.append(f"class {class_name!r}: only {n} descriptions exist; --explain {options.explain} "
                            f"gives {n} per image")
    return facts


def _evaluate(ev: ClassEval, s: Sample, r, truth: np.ndarray | None) -> None:
    if s.label is None:
        return
    ev.labels.append(s.label)
    ev.scores.append(r.score)
    if truth is not None:
        ev.maps.append(_eval_resize(r.anomaly_map))
        ev.masks.append(_eval_resize(truth.astype(np.float32)) >= 0.5)
