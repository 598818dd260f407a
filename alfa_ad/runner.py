"""The local engine: score a dataset class by class, feeding every result to the run's files.

``run_dataset`` is the one result stream of a batch run.  Per class it fits
references and thresholds (``prepare``); images are decoded ahead in worker threads
(:func:`alfa_ad.pipeline.prefetch`), scored in batches, and each result is handed to
one background writer thread that writes the score rows, overlays and masks
(:class:`~alfa_ad.outputs.writers.RunFiles`) and accumulates the metrics in constant
memory (:class:`~alfa_ad.evaluation.streaming.StreamingPixelMetrics`).  What stays in
memory per image is its score row (about 1 KB).
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
from .evaluation.streaming import StreamingPixelMetrics
from .io.datasets import Sample
from .io.images import ImageLoadError, load_image, load_mask
from .outputs import resume as checkpoints
from .outputs.record import RunOptions
from .outputs.tables import METRIC_TITLES, METRICS, mean_over  # noqa: F401  (re-exported)
from .outputs.writers import CSV_FIELDS, RunFiles, read_jsonl  # noqa: F401  (re-exported)
from .pipeline import BackgroundWriter, prefetch


@dataclass
class ClassEval:
    """What one class contributes to metrics: image labels and scores, and pixel
    histograms (maps and masks at EVAL_SIZE)."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pixels: StreamingPixelMetrics = field(default_factory=StreamingPixelMetrics)
    kept: list[tuple[int, int]] = field(default_factory=list)

    def metrics(self) -> dict[str, float | None]:
        out = summarize(self.labels, self.scores, None, None)
        out.update(self.pixels.metrics())
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"labels": np.array(self.labels, dtype=np.int64), "scores": np.array(self.scores),
                "kept": np.array(self.kept, dtype=np.int64).reshape(-1, 2), **self.pixels.state()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "ClassEval":
        return cls([int(v) for v in state["labels"]], [float(v) for v in state["scores"]],
                   StreamingPixelMetrics.from_state(state), [tuple(map(int, k)) for k in state["kept"]])


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
    resumed_rows: int = 0

    def mean_metrics(self) -> dict[str, float | None]:
        return mean_over(self.metrics.values())


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
    resume: bool = False,
    workers: int | None = None,
    overlay_scale: str = "class",
) -> RunReport:
    """Score every sample; every result goes to the run's files as it comes.

    ``prepare(detector, class_folder, prompt_name)`` runs before each class (few-shot:
    fit the memory bank, calibrate) and returns facts for the report; raising
    ``ImageLoadError``/``ValueError`` there skips the class with the error recorded.
    ``resume``: continue from the last checkpoint in ``out`` (images already scored
    are not scored again; the metrics come out as if the run had not stopped).
    """
    saved = checkpoints.load(out) if resume else None
    state = saved[0] if saved else checkpoints.ResumeState()
    if saved and state.record_detector and state.record_detector != record.get("detector"):
        raise ValueError(f"{out}: --resume with other detector options than the interrupted run "
                         "(compare its scores.json config); run without --resume to start again")
    prev_rows = read_jsonl(out / "scores.jsonl", state.rows) if saved else []
    state.rows = len(prev_rows)
    state.record_detector = dict(record.get("detector") or {})
    files = RunFiles(out, record, overlays=overlays, overlay_scale=overlay_scale, previous_rows=prev_rows)
    files.warnings += list(warnings)
    files.errors += state.errors
    report = RunReport(out, record, rows=files.rows, errors=files.errors, warnings=files.warnings,
                       resumed_rows=len(prev_rows))
    for cls, done in state.finished.items():
        report.classes[cls] = done["facts"]
        if done.get("metrics"):
            report.metrics[cls] = done["metrics"]
    writer = BackgroundWriter(maxsize=2 * detector.batch_size)

    def error(message: str) -> None:
        if message in report.errors:  # reported before an interruption, met again on resume
            return
        report.errors.append(message)
        if on_error:
            on_error(message)

    def record_one(ev: ClassEval, s: Sample, im, r) -> None:  # runs in the writer thread
        truth = _mask_for(s, im.size, report.warnings) if s.label is not None else None
        files.add(s, im, r, truth)
        ev.kept.append((len(r.kept_prompts["normal"]), len(r.kept_prompts["abnormal"])))
        if s.label is not None:
            ev.labels.append(s.label)
            ev.scores.append(r.score)
            if truth is not None:
                ev.pixels.add(_eval_resize(truth.astype(np.float32)) >= 0.5, _eval_resize(r.anomaly_map))
        state.rows = len(report.rows)
        if len(ev.kept) % checkpoints.CHECKPOINT_EVERY == 0:
            state.errors = list(report.errors)
            checkpoints.save(out, state, ev.state())

    t0 = time.perf_counter()
    try:
        for class_name, samples in dataset.items():
            if class_name in state.finished:
                continue
            name = options.class_names.get(class_name, class_name)
            ev, first_row = ClassEval(), len(report.rows)
            if state.current == class_name and saved and saved[1] is not None:
                ev, facts = ClassEval.from_state(saved[1]), dict(state.current_facts)
                done = {r["path"] for r in report.rows if r.get("class") == class_name}
                first_row -= len(done)
                samples = [s for s in samples if str(s.path) not in done]
                if prepare is not None:  # the same references and thresholds as before (seeded)
                    facts.update(prepare(detector, class_name, name))
            else:
                facts = _class_facts(detector, class_name, name, options, report.warnings)
                if prepare is not None:
                    try:
                        facts.update(prepare(detector, class_name, name))
                    except (ImageLoadError, ValueError) as exc:
                        error(f"class {class_name!r} skipped: {exc}")
                        continue
            state.current, state.current_facts = class_name, facts
            checkpoints.save(out, state, ev.state())
            files.begin_class(class_name, facts.get("thresholds"))
            total, done_count, batch = len(samples), 0, []
            for s, im, exc in prefetch(lambda smp: load_image(smp.path), samples, workers=workers,
                                       lookahead=2 * detector.batch_size):
                if exc is not None:
                    error(str(exc) if isinstance(exc, ImageLoadError) else f"{s.path}: {type(exc).__name__}: {exc}")
                else:
                    batch.append((s, im))
                if len(batch) == detector.batch_size:
                    _score(detector, batch, name, options.explain, writer, record_one, ev)
                    batch = []
                done_count += 1
                if on_progress and (not batch or done_count == total):
                    on_progress(class_name, done_count, total)
            if batch:
                _score(detector, batch, name, options.explain, writer, record_one, ev)
            writer.flush()
            files.end_class()  # the class's overlays, on its one colour scale
            if on_progress:
                on_progress(class_name, total, total)
            if ev.kept:
                facts["mean_prompts_kept"] = {"normal": float(np.mean([k[0] for k in ev.kept])),
                                              "abnormal": float(np.mean([k[1] for k in ev.kept]))}
            counts = decision_counts(report.rows[max(0, first_row):])
            if counts:
                facts["decisions"] = counts
            report.classes[class_name] = facts
            if ev.labels:
                report.metrics[class_name] = ev.metrics()
            report.seconds = time.perf_counter() - t0
            files.write(report.metrics, report.classes, report.seconds)
            state.finished[class_name] = {"facts": facts, "metrics": report.metrics.get(class_name)}
            state.current, state.current_facts = None, {}
            state.errors = list(report.errors)
            checkpoints.save(out, state, None)
        report.seconds = time.perf_counter() - t0
        files.write(report.metrics, report.classes, report.seconds)
    finally:
        try:
            writer.close()
        finally:
            files.close()
    return report


def _score(detector: Detector, batch, name: str, explain: int, writer: BackgroundWriter, record_one,
           ev: ClassEval) -> None:
    results = detector.predict([im for _, im in batch], name, explain=explain)
    for (s, im), r in zip(batch, results):
        writer.submit(record_one, ev, s, im, r)


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
    if options.explain:
        n = len(detector.explanation_candidates(prompt_name))
        if n == 0:
            warnings.append(f"class {class_name!r}: no LLM descriptions to explain with; --explain gives nothing")
        elif n < options.explain:
            warnings.append(f"class {class_name!r}: only {n} descriptions exist; --explain {options.explain} "
                            f"gives {n} per image")
    return facts
