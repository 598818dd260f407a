"""A batch run: score a dataset class by class, feeding every result to the run's files.

``run_dataset`` is the one consumer of a batch run, whatever engine scores it
(:mod:`alfa_ad.engines`: ``local`` in this process, ``ray`` on Ray Data).  Per class
it fits references and thresholds (``prepare``) when the engine asks for the class;
the engine decodes and scores the images and hands back (sample, result or error)
items, which are put in dataset order (:func:`alfa_ad.engines.in_order`) and handed to
one background writer thread that writes the score rows, overlays and masks
(:class:`~alfa_ad.outputs.writers.RunFiles`) and accumulates the metrics in constant
memory (:class:`~alfa_ad.evaluation.streaming.StreamingPixelMetrics`).  What stays in
memory per image is its score row (about 1 KB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .detector import Detector
from .engines import ClassJob, Engine, Scored, in_order
from .engines.local import LocalEngine
from .evaluation.metrics import summarize
from .evaluation.resize import resize_for_evaluation
from .evaluation.streaming import StreamingPixelMetrics
from .io.datasets import Sample, ground_truth_mask
from .io.images import ImageLoadError
from .outputs import resume as checkpoints
from .outputs.record import RunOptions
from .outputs.tables import mean_over
from .outputs.writers import RunFiles, read_jsonl
from .pipeline import BackgroundWriter


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
    engine: Engine | None = None,
) -> RunReport:
    """Score every sample; every result goes to the run's files as it comes.

    ``prepare(detector, class_folder, prompt_name)`` runs before each class (few-shot:
    fit the memory bank, calibrate) and returns facts for the report; raising
    ``ImageLoadError``/``ValueError`` there skips the class with the error recorded.
    ``resume``: continue from the last checkpoint in ``out`` (images already scored
    are not scored again; the metrics come out as if the run had not stopped).
    ``engine``: where images are decoded and scored (default: the local engine with
    ``workers`` decode threads); whatever it is, its results are taken here in dataset
    order and written by the same code.
    """
    run = _DatasetRun(detector, out, record, options, prepare, on_progress, on_error)
    run.open(resume, warnings, overlays, overlay_scale)
    return run.score(engine if engine is not None else LocalEngine(workers), dataset)


class _DatasetRun:
    """One :func:`run_dataset` call: its files, report and checkpoints, and the consumer of
    the engine's per-class streams."""

    def __init__(self, detector: Detector, out: Path, record: dict[str, Any], options: RunOptions,
                 prepare: Prepare | None, on_progress: Callable[[str, int, int], None] | None,
                 on_error: Callable[[str], None] | None) -> None:
        self.detector, self.out, self.record, self.options = detector, out, record, options
        self.prepare, self.on_progress, self.on_error = prepare, on_progress, on_error

    def open(self, resume: bool, warnings: Sequence[str], overlays: bool, overlay_scale: str) -> None:
        """The run's files and report, continued from the last checkpoint with ``resume``."""
        out, record = self.out, self.record
        self.saved = saved = checkpoints.load(out) if resume else None
        self.state = state = saved[0] if saved else checkpoints.ResumeState()
        if saved and state.record_detector and state.record_detector != record.get("detector"):
            raise ValueError(f"{out}: --resume with other detector options than the interrupted run "
                             "(compare its scores.json config); run without --resume to start again")
        prev_rows = read_jsonl(out / "scores.jsonl", state.rows) if saved else []
        state.rows = len(prev_rows)
        state.record_detector = dict(record.get("detector") or {})
        self.files = files = RunFiles(out, record, overlays=overlays, overlay_scale=overlay_scale,
                                      previous_rows=prev_rows)
        files.warnings += list(warnings)
        files.errors += state.errors
        self.report = report = RunReport(out, record, rows=files.rows, errors=files.errors, warnings=files.warnings,
                                         resumed_rows=len(prev_rows))
        for cls, done in state.finished.items():
            report.classes[cls] = done["facts"]
            if done.get("metrics"):
                report.metrics[cls] = done["metrics"]

    def error(self, message: str) -> None:
        if message in self.report.errors:  # reported before an interruption, met again on resume
            return
        self.report.errors.append(message)
        if self.on_error:
            self.on_error(message)

    def record_one(self, ev: ClassEval, item: Scored) -> None:
        """Write one result and add it to the class's metrics (runs in the writer thread)."""
        s, r, report = item.sample, item.result, self.report
        size = (r.anomaly_map.shape[1], r.anomaly_map.shape[0])  # the map has the image's size
        truth = ground_truth_mask(s, size, report.warnings) if s.label is not None else None
        self.files.add(s, item.image, r, truth)
        ev.kept.append((len(r.kept_prompts["normal"]), len(r.kept_prompts["abnormal"])))
        if s.label is not None:
            ev.labels.append(s.label)
            ev.scores.append(r.score)
            if truth is not None:
                ev.pixels.add(resize_for_evaluation(truth.astype(np.float32)) >= 0.5,
                              resize_for_evaluation(r.anomaly_map))
        self.state.rows = len(report.rows)
        if len(ev.kept) % checkpoints.CHECKPOINT_EVERY == 0:
            self.state.errors = list(report.errors)
            checkpoints.save(self.out, self.state, ev.state())

    def jobs(self, dataset: dict[str, list[Sample]]) -> Iterator[ClassJob]:
        """Classes to score, each prepared when the engine asks for it."""
        state, saved, report, prepare, detector = self.state, self.saved, self.report, self.prepare, self.detector
        for class_name, samples in dataset.items():
            if class_name in state.finished:
                continue
            name = self.options.class_names.get(class_name, class_name)
            ev, first_row = ClassEval(), len(report.rows)
            if state.current == class_name and saved and saved[1] is not None:
                ev, facts = ClassEval.from_state(saved[1]), dict(state.current_facts)
                done = {r["path"] for r in report.rows if r.get("class") == class_name}
                first_row -= len(done)
                samples = [s for s in samples if str(s.path) not in done]
                if prepare is not None:  # the same references and thresholds as before (seeded)
                    facts.update(prepare(detector, class_name, name))
            else:
                facts = _class_facts(detector, class_name, name, self.options, report.warnings)
                if prepare is not None:
                    try:
                        facts.update(prepare(detector, class_name, name))
                    except (ImageLoadError, ValueError) as exc:
                        self.error(f"class {class_name!r} skipped: {exc}")
                        continue
            yield ClassJob(class_name, name, samples, (ev, facts, first_row))

    def score(self, engine: Engine, dataset: dict[str, list[Sample]]) -> RunReport:
        """Consume the engine's streams in dataset order; the files are closed whatever happens."""
        writer = BackgroundWriter(maxsize=2 * self.detector.batch_size)
        self.t0 = time.perf_counter()
        try:
            for job, stream in engine.run(self.detector, self.jobs(dataset), self.options.explain):
                self.score_class(job, stream, writer)
            self.report.seconds = time.perf_counter() - self.t0
            self.files.write(self.report.metrics, self.report.classes, self.report.seconds)
        finally:
            try:
                writer.close()
            finally:
                self.files.close()
        return self.report

    def score_class(self, job: ClassJob, stream: Iterator[Scored], writer: BackgroundWriter) -> None:
        state, report, files = self.state, self.report, self.files
        class_name, samples, (ev, facts, first_row) = job.class_name, job.samples, job.context
        state.current, state.current_facts = class_name, facts
        checkpoints.save(self.out, state, ev.state())
        files.begin_class(class_name, facts.get("thresholds"))
        total = len(samples)
        for done_count, item in enumerate(in_order(stream, total), 1):
            if item.error is not None:
                self.error(item.error)
            else:
                writer.submit(self.record_one, ev, item)
            if self.on_progress:
                self.on_progress(class_name, done_count, total)
        writer.flush()
        files.end_class()  # the class's overlays, on its one colour scale
        if self.on_progress:
            self.on_progress(class_name, total, total)
        if ev.kept:
            facts["mean_prompts_kept"] = {"normal": float(np.mean([k[0] for k in ev.kept])),
                                          "abnormal": float(np.mean([k[1] for k in ev.kept]))}
        counts = decision_counts(report.rows[max(0, first_row):])
        if counts:
            facts["decisions"] = counts
        report.classes[class_name] = facts
        if ev.labels:
            report.metrics[class_name] = ev.metrics()
        report.seconds = time.perf_counter() - self.t0
        files.write(report.metrics, report.classes, report.seconds)
        state.finished[class_name] = {"facts": facts, "metrics": report.metrics.get(class_name)}
        state.current, state.current_facts = None, {}
        state.errors = list(report.errors)
        checkpoints.save(self.out, state, None)


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
