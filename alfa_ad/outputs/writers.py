"""The files a run writes, fed one result at a time.

``scores.csv`` is appended row by row (flushed), so an interrupted run keeps every
image it finished; ``scores.json`` and the metric files are rewritten atomically
after every class; overlays and masks are written atomically as they come.  A new
run into an ``--out`` that holds an earlier run's outputs first removes those
(only the files alfa-ad writes), so the folder never mixes two runs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.atomic import atomic_save_image, atomic_write_text
from ..io.datasets import Sample
from ..report.overlays import ClassOverlayWriter
from ..results import DetectionResult
from .tables import write_metric_files

CSV_FIELDS = ("class", "path", "defect_type", "label", "score", "decision", "mask_area", "global_score", "map_max",
              "kept_normal", "kept_abnormal", "total_normal", "total_abnormal", "tiles", "descriptors", "method",
              "weights")
OWNED_FILES = ("scores.csv", "scores.jsonl", "scores.json", "metrics.json", "metrics.csv", "metrics.md",
               "metrics_seeds.json", "metrics_seeds.csv", "metrics_seeds.md", "report.html")
OWNED_FOLDERS = ("overlays", "masks", "report_files", "class_stats", ".resume")


def previous_outputs(out: Path) -> list[Path]:
    """The files and folders of an earlier run in ``out`` (also per-seed sub-runs)."""
    if not out.is_dir():
        return []
    found = [out / n for n in (*OWNED_FILES, *OWNED_FOLDERS) if (out / n).exists()]
    return found + sorted(p for p in out.glob("seed_*") if p.is_dir() and (p / "scores.csv").exists())


def clear_previous(out: Path) -> int:
    """Remove an earlier run's outputs from ``out``; returns how many entries went."""
    gone = previous_outputs(out)
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return len(gone)


def csv_row(sample: Sample, result: DetectionResult) -> dict[str, Any]:
    """The row of one image: what scores.csv/.json hold (``key``: its overlay/mask name)."""
    row = {"class": sample.class_name, "path": str(sample.path), "defect_type": sample.defect_type,
           "label": "" if sample.label is None else sample.label, **result.summary(), "key": sample.key}
    if result.descriptors:
        row["descriptors"] = [d.as_dict() for d in result.descriptors]
    return row


def _csv_value(key: str, value: Any) -> Any:
    if key == "descriptors" and isinstance(value, list):
        return "; ".join(f"{d['text']} [{d['side']}, {d['source']}, {d['similarity']:.3f}]" for d in value)
    return value


class RunFiles:
    """Writers of one run folder, all reading the one run ``record``.

    ``scores.csv`` and ``scores.jsonl`` (one typed JSON object per image) are appended
    and flushed per image.  ``previous_rows``: rows of an interrupted run being resumed
    (the files are rewritten with exactly those rows first).
    """

    def __init__(self, out: Path, record: dict[str, Any], *, overlays: bool = True, overlay_scale: str = "class",
                 previous_rows: list[dict[str, Any]] | None = None) -> None:
        self.out = out
        self.record = record
        self.overlays = overlays
        self.overlay_scale = overlay_scale
        self._maps: ClassOverlayWriter | None = None
        self.rows: list[dict[str, Any]] = list(previous_rows or [])
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.banner = None if record["weights_source"]["source"] in ("pretrained", "checkpoint") else record["weights"]
        out.mkdir(parents=True, exist_ok=True)
        self._csv = open(out / "scores.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._jsonl = open(out / "scores.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._csv, fieldnames=CSV_FIELDS, extrasaction="ignore")
        self._writer.writeheader()
        for row in self.rows:
            self._append(row)
        self._flush()

    def _append(self, row: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        self._writer.writerow({k: _csv_value(k, v) for k, v in row.items()})
        self._jsonl.write(json.dumps({**row, **(extra or {})}) + "\n")

    def begin_class(self, class_name: str, thresholds: dict[str, Any] | None) -> None:
        """Overlays of a class share one colour scale: they are rendered at :meth:`end_class`."""
        self._maps = ClassOverlayWriter(self.out, class_name, scale=self.overlay_scale, render=self.overlays,
                                        thresholds=thresholds, banner=self.banner)

    def end_class(self) -> None:
        if self._maps is not None:
            self._maps.finish()
            self.warnings += self._maps.warnings
            self._maps = None

    def _flush(self) -> None:
        self._csv.flush()
        self._jsonl.flush()

    @property
    def header(self) -> dict[str, Any]:
        return {"alfa_ad_version": self.record["version"], "weights": self.record["weights"], "config": self.record}

    def add(self, sample: Sample, image: Image.Image, result: DetectionResult, truth: np.ndarray | None) -> None:
        """Record one scored image: its rows now (the kept prompts go to scores.jsonl only,
        keeping the in-memory row small), its mask when flagged, its map for the overlay."""
        row = csv_row(sample, result)
        self.rows.append(row)
        self._append(row, {"kept_prompts": result.kept_prompts, "kept_sources": result.kept_sources})
        self._flush()
        if result.decision and result.mask is not None:
            atomic_save_image(self.out / "masks" / f"{sample.key}.png",
                              Image.fromarray(result.mask.astype(np.uint8) * 255))
        if self._maps is None:
            self.begin_class(sample.class_name, None)
        self._maps.add(sample.key, sample.path, result.anomaly_map, truth if sample.label else None,
                       score=result.score, image=image, decision=result.decision)

    def write(self, metrics: dict[str, dict], classes: dict[str, dict], seconds: float) -> None:
        """(Re)write scores.json and the metric files atomically."""
        atomic_write_text(self.out / "scores.json", json.dumps(
            {**self.header, "images": self.rows, "errors": self.errors, "warnings": self.warnings}, indent=1))
        write_metric_files(self.out, self.header, metrics, classes,
                           {"n_images": len(self.rows), "n_errors": len(self.errors), "seconds": round(seconds, 2)})

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def read_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a ``scores.jsonl`` (fewer when the file is shorter)."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if len(rows) >= limit:
                break
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by the interruption
                break
    return rows
