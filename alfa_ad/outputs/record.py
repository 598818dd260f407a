"""The run record: one dict that says exactly what a run did, built in one place.

Every writer (scores.csv/json, metrics.json/csv/md, overlays' banners, the HTML
report) reads this record, so no two files can disagree, and every field is true
for the run that wrote it: the weights identity (file and SHA-256 when there is a
file), the prompt sources actually used (with counts per class), references only
when few-shot, calibration fields only when calibrated.  ``record["detector"]`` is
the :class:`~alfa_ad.config.DetectorConfig` that ``Detector.from_config`` rebuilds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .._version import __version__


@dataclass
class RunOptions:
    """What a batch run was asked to do beyond the detector itself."""

    data: str
    shots: str = "0"  # "0", "k" or "all"
    seed: int = 0
    normals: str | None = None  # folder of references (None: the dataset's train split)
    coreset: int | None = None
    calibrate: str | None = None  # folder of extra normal images, "leave-one-out", or None
    fpr: float | None = None
    explain: int = 0
    class_names: dict[str, str] = field(default_factory=dict)  # class folder -> object name in prompts
    prompt_classes: dict[str, str] = field(default_factory=dict)  # class folder -> prompt-library class
    seeds: list[int] | None = None
    engine: str = "local"  # where images were decoded and scored (alfa_ad.registry.ENGINES)

    @property
    def few_shot(self) -> bool:
        return self.shots != "0"


def build_record(detector, options: RunOptions, classes: list[str], prompt_counts: dict[str, dict[str, int]]
                 ) -> dict[str, Any]:
    """The record of a run of ``detector`` over ``classes`` with ``options``.

    ``prompt_counts``: per class, the number of prompts each source actually gave.
    """
    weights = detector.backbone.weights
    cfg = detector.config
    used = [s.name for s in detector.sources if any(c.get(s.name) for c in prompt_counts.values())]
    record: dict[str, Any] = {
        "version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": weights.label,
        "weights_source": weights.as_dict(),
        "model": weights.model_name,
    }
    if weights.source == "pretrained":
        record["pretrained"] = weights.detail
    if weights.file:
        record["weights_file"] = weights.file
        record["weights_sha256"] = weights.sha256
    if weights.source == "random":
        record["weights_seed"] = cfg.seed
    record.update({"method": cfg.method, "aligner": cfg.aligner, "scales": list(cfg.scales),
                   "window_strides": list(cfg.window_strides), "tile": cfg.tile})
    if cfg.options:
        record["method_options"] = dict(cfg.options)
    record["prompt_sources"] = list(dict.fromkeys(used))
    if cfg.prompts and "llm" in used:
        record["prompts_file"] = cfg.prompts
    learned = [s.describe() for s in detector.sources if s.name == "learned" and hasattr(s, "describe")]
    if learned:
        record["learned_prompts"] = learned[0]
    record.update({"data": options.data, "classes": list(classes), "shots": options.shots})
    if options.class_names:
        record["class_names"] = dict(options.class_names)
    if options.prompt_classes:
        record["prompt_classes"] = dict(options.prompt_classes)
    if options.few_shot:
        record["seed"] = options.seed
        record["normals"] = options.normals or "train split of --data"
        if options.coreset is not None:
            record["coreset"] = options.coreset
    if options.calibrate:
        record["calibration"] = options.calibrate
        record["fpr"] = options.fpr
    if options.explain:
        record["explain"] = options.explain
    record["engine"] = options.engine
    batch_note = getattr(detector.method, "batch_dependence", None)
    if batch_note:  # a method whose scores depend on the images scored together (musc)
        record["scores_depend_on_the_batch"] = batch_note
    record["detector"] = cfg.as_dict()
    return record
