"""The scoring state the service holds: one model, one Detector per fitted state.

Framework-free (no HTTP, no asyncio): the FastAPI app, a Ray Serve deployment or a test
hold a :class:`ScoringService` and call :meth:`ScoringService.score` from one thread.

Zero-shot without calibration, one Detector serves every class (text embeddings are
per class inside it).  With references (``shots``) or calibration, each class gets its
own Detector (its own memory bank and thresholds) on the *same* backbone object, so
the model's weights are in memory once.  musc gets one Detector per class too, holding
the class's pool (``Detector.fit_pool``: the ``normals``/``data`` images, at most
``group - 1``), which scores each upload alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._version import __version__
from ..detector import Detector
from ..registry import trait
from ..results import DetectionResult
from .config import ServiceOptions, build_detector


class ScoringService:
    """Detectors by class, loaded and warmed up once; ``score`` is the only hot path."""

    def __init__(self, detectors: dict[str, Detector], facts: dict[str, dict[str, Any]],
                 config: dict[str, Any] | None = None) -> None:
        if not detectors:
            raise ValueError("a scoring service needs at least one class")
        self.detectors = detectors
        self.facts = facts
        self.config = dict(config or {})
        first = next(iter(detectors.values()))
        self.backbone = first.backbone
        self.method = first.method.name
        self.weights = first.weights_label
        self.weights_source = first.backbone.weights.as_dict()
        self.version = __version__

    @classmethod
    def build(cls, detector_record: dict[str, Any], options: ServiceOptions,
              log: Callable[[str], None] | None = None) -> "ScoringService":
        """Load the model once, fit references and thresholds per class, warm every class up.

        Raises ValueError / ImageLoadError / WeightsUnavailableError with one-line messages.
        """
        say = log or (lambda _m: None)
        start = time.perf_counter()
        if options.threads:
            torch.set_num_threads(options.threads)
        record = dict(detector_record)
        record.setdefault("batch_size", options.max_batch)
        first = build_detector(record)
        say(f"model loaded: {first.weights_label} on {first.backbone.device} ({time.perf_counter() - start:.1f} s)")
        detectors: dict[str, Detector] = {}
        facts: dict[str, dict[str, Any]] = {}
        pooled = trait(first.method, "mutual")  # musc: each class scored against its own pool
        per_class = options.per_class or pooled
        for i, name in enumerate(options.classes):
            det = first if (i == 0 or not per_class) else build_detector(record, backbone=first.backbone)
            info: dict[str, Any] = {"shots": options.shots}
            if pooled:
                info.update(_prepare_pool(det, name, options, int(record.get("seed", 0))))
            elif options.per_class:
                info.update(_prepare_class(det, name, options, int(record.get("seed", 0))))
            det.predict([np.full((64, 64, 3), 128, np.uint8)], name, explain=1)  # text embeddings, descriptors, warm-up
            prompts = det.prompts(name)
            info.update({"n_prompts": {"normal": len(prompts.normal), "abnormal": len(prompts.abnormal)},
                         "n_descriptors": len(det.descriptors(name)),
                         "prompt_sources": [s.name for s in det.sources],
                         "references": len(det.normals),
                         "memory_bank_size": det.method.bank_size if det.normals else 0})
            detectors[name] = det
            facts[name] = info
            held = f"a pool of {info['pool']['images']} images" if pooled else f"{len(det.normals)} references"
            say(f"class {name}: ready ({held}, {'thresholds set' if det.thresholds else 'no thresholds'})")
        config = {"detector": first.config.as_dict(), "classes": options.classes, "shots": options.shots,
                  "fpr": options.fpr if options.per_class else None}
        return cls(detectors, facts, _jsonable(config))

    # ------------------------------------------------------------------ queries
    @property
    def classes(self) -> list[str]:
        return list(self.detectors)

    def thresholds(self, class_name: str):
        return self.detectors[class_name].thresholds

    def describe(self) -> list[dict[str, Any]]:
        """Per-class facts for ``GET /v1/classes``."""
        out = []
        for name, det in self.detectors.items():
            th = det.thresholds
            out.append({"class_name": name, **self.facts.get(name, {}),
                        "thresholds": th.as_dict() if th is not None else None})
        return _jsonable(out)

    # ------------------------------------------------------------------ scoring
    def score(self, class_name: str, images: Sequence[Any], explain: int = 0) -> list[DetectionResult]:
        """Score images of one class in one batch (``Detector.predict``)."""
        try:
            detector = self.detectors[class_name]
        except KeyError:
            raise ValueError(f"unknown class {class_name!r}; served: {', '.join(self.detectors)}") from None
        return detector.predict(list(images), class_name, explain=explain)

    def score_note(self, class_name: str) -> str | None:
        """What a response says its score depends on (musc: the class's pool), else None."""
        return getattr(self.detectors[class_name].method, "batch_dependence", None)


def _prepare_pool(detector: Detector, name: str, options: ServiceOptions, seed: int) -> dict[str, Any]:
    """Fix the class's musc pool once: the images of ``normals`` (or ``DIR/<class>``), else of
    the class's train split of ``data``, at most the method's ``pool_cap``, drawn with ``seed``
    beyond it (``Detector.fit_pool``)."""
    from ..references import find_pool

    pool = find_pool(name, normals=options.folder_for("normals", name), data=options.data, name_data=True)
    if len(pool.images) < 2:
        raise ValueError(f"class {name!r}: a musc pool needs at least 2 images, {pool.where} holds {len(pool.images)}")
    cap = detector.method.pool_cap
    drawn = len(pool.images) > cap
    source = f"{pool.where}, {cap} of {len(pool.images)} drawn with seed {seed}" if drawn else pool.where
    chosen = detector.fit_pool(pool.images, seed=seed, source=source)
    return {"pool": {"images": len(chosen), "candidates": len(pool.images), "cap": cap, "from": pool.where,
                     "seed": seed if drawn else None, "rescoring": "among the upload and the pool"
                     if detector.method.rescore_ks else "off (rescore_ks empty)"},
            "scores_depend_on_the_pool": detector.method.batch_dependence}


def _prepare_class(detector: Detector, name: str, options: ServiceOptions, seed: int) -> dict[str, Any]:
    """Fit the class's references and set its thresholds, as ``alfa-ad run`` does (its
    reference pools, sampling and ``few_shot_prepare``): ``--calibrate`` folder, else
    leave-one-out over 2 or more references."""
    from ..outputs.record import RunOptions
    from ..references import calibrates_by_leave_one_out, few_shot_prepare, find_pool, parse_shots, pool_shortfall

    shots = parse_shots(options.shots)
    normals = options.folder_for("normals", name)
    pools = {}
    if shots != 0:
        if normals is None and options.data is None:
            raise ValueError(f"class {name!r}: --shots {shots} needs --normals or --data")
        pools[name] = find_pool(name, normals=normals, data=options.data, name_data=True)
        short = pool_shortfall(name, pools[name], shots)
        if short:
            raise ValueError(short)
    calibrate = options.folder_for("calibrate", name)
    run = RunOptions(data=str(options.data or ""), shots=options.shots, seed=seed, coreset=options.coreset,
                     fpr=options.fpr, normals=str(normals) if normals else None)
    if calibrate is not None:
        run.calibrate = str(calibrate)
    elif calibrates_by_leave_one_out(shots):
        run.calibrate = "leave-one-out"
    facts = few_shot_prepare(pools, run, calibrate)(detector, name, name)
    facts.pop("reference_warnings", None)
    return facts


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
