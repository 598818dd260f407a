"""Read a run folder's files, defensively: any key may be missing (older or newer runs).

Everything the report shows comes from here, so ``alfa-ad report RUN_DIR`` works on a
folder alone: ``scores.json`` (else ``scores.csv``), ``metrics.json``, ``metrics_seeds.json``,
``class_stats/<class>.json|npz`` and the overlays, masks and seed sub-folders on disk.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# The six metrics of the run's tables, in the same order (tests check it against the runner).
METRIC_COLUMNS = (("image_auroc", "img AUROC"), ("image_aupr", "img AUPR"), ("image_f1_max", "img F1-max"),
                  ("pixel_auroc", "px AUROC"), ("pro", "PRO"), ("pixel_f1_max", "px F1-max"))
MEANINGFUL_SOURCES = ("pretrained", "checkpoint")
_NOT_REAL = re.compile(r"\b(random|planted|mini)\b", re.IGNORECASE)


class RunFolderError(ValueError):
    """The folder is not a run folder (no scores and no seed summary)."""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def as_label(value: Any) -> int | None:
    if value in (0, 1, True, False):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


@dataclass
class RunFolder:
    out: Path
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    mean: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-class facts of metrics.json
    class_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # class_stats/<class>.json
    seeds: dict[str, Any] = field(default_factory=dict)  # metrics_seeds.json
    seed_dirs: list[Path] = field(default_factory=list)
    version: str = ""
    date: str = ""
    seconds: float | None = None

    @property
    def weights_label(self) -> str:
        w = self.config.get("weights")
        if isinstance(w, dict):
            return str(w.get("label") or w)
        source = self.config.get("weights_source")
        return str(w or (source.get("label") if isinstance(source, dict) else "") or "unknown weights")

    @property
    def weights_meaningful(self) -> bool:
        """False for random, planted or other test weights (the report then shows a banner)."""
        for key in ("weights_source", "weights"):
            info = self.config.get(key)
            if isinstance(info, dict):
                if isinstance(info.get("meaningful"), bool):
                    return info["meaningful"]
                if info.get("source"):
                    return info["source"] in MEANINGFUL_SOURCES
        return not _NOT_REAL.search(self.weights_label) and self.weights_label != "unknown weights"

    @property
    def class_names(self) -> list[str]:
        names = [str(r.get("class", "")) for r in self.rows]
        return list(dict.fromkeys([*self.metrics, *names, *self.class_stats]))

    def thresholds(self, cls: str) -> dict[str, Any] | None:
        """Calibrated thresholds of a class: class_stats, metrics.json facts, or the config."""
        for source in (self.class_stats.get(cls, {}), self.classes.get(cls, {})):
            if isinstance(source.get("thresholds"), dict):
                return source["thresholds"]
        cfg = self.config.get("thresholds")
        if isinstance(cfg, dict):
            per = cfg.get(cls, cfg)
            return per if isinstance(per, dict) and "image" in per else None
        return None

    def references(self, cls: str) -> list[str]:
        refs = self.classes.get(cls, {}).get("references")
        if refs is None:
            cfg = self.config.get("references")
            refs = cfg.get(cls) if isinstance(cfg, dict) else cfg
        if isinstance(refs, dict):  # e.g. {"paths": [...], ...}
            refs = refs.get("paths") or refs.get("images")
        return [str(r) for r in refs] if isinstance(refs, list) else []


def _date(out: Path, config: dict[str, Any]) -> str:
    for key in ("date", "started", "finished"):
        if config.get(key):
            return str(config[key])
    for name in ("scores.json", "metrics_seeds.json", "scores.csv"):
        if (out / name).is_file():
            stamp = datetime.fromtimestamp((out / name).stat().st_mtime).astimezone()
            return stamp.isoformat(timespec="seconds") + f" (time {name} was written)"
    return ""


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by an interruption
                break
            if isinstance(row, dict):
                rows.append(row)
    return rows


def load_run(out: str | Path) -> RunFolder:
    """Everything the report needs from a run folder; raises :class:`RunFolderError` if it is not one."""
    out = Path(out)
    if not out.is_dir():
        raise RunFolderError(f"{out}: not a folder")
    scores, metrics, seeds = _json(out / "scores.json"), _json(out / "metrics.json"), _json(out / "metrics_seeds.json")
    streamed = _jsonl_rows(out / "scores.jsonl")  # rows as written image by image, with the kept prompts
    if isinstance(scores.get("images"), list):
        rows = scores["images"]
        extra = {r.get("key") or r.get("path"): r for r in streamed}
        for r in rows:  # scores.json leaves the kept prompts to scores.jsonl (small rows in memory)
            more = extra.get(r.get("key") or r.get("path")) if isinstance(r, dict) else None
            if more:
                for k in ("kept_prompts", "kept_sources"):
                    r.setdefault(k, more.get(k))
    else:
        rows = streamed or _csv_rows(out / "scores.csv")
    seed_dirs = sorted((p for p in out.glob("seed_*") if p.is_dir() and (p / "scores.json").is_file()),
                       key=lambda p: (len(p.name), p.name))
    if not rows and not seeds and not (out / "scores.csv").is_file() and not (out / "scores.json").is_file():
        raise RunFolderError(f"{out}: no scores.json, scores.csv or metrics_seeds.json - not an alfa-ad run folder")
    config = next((d["config"] for d in (scores, metrics, seeds) if isinstance(d.get("config"), dict)), {})
    if "weights" not in config:
        config = {**config, "weights": scores.get("weights") or metrics.get("weights") or seeds.get("weights")}
    run = RunFolder(out=out, config=config, rows=[r for r in rows if isinstance(r, dict)],
                    errors=[str(e) for e in scores.get("errors") or []],
                    warnings=[str(w) for w in scores.get("warnings") or []],
                    metrics={k: v for k, v in (metrics.get("metrics") or {}).items() if isinstance(v, dict)},
                    mean=metrics.get("mean") if isinstance(metrics.get("mean"), dict) else {},
                    classes={k: v for k, v in (metrics.get("classes") or {}).items() if isinstance(v, dict)},
                    seeds=seeds, seed_dirs=seed_dirs, seconds=as_float(metrics.get("seconds")))
    run.version = str(scores.get("alfa_ad_version") or metrics.get("alfa_ad_version") or seeds.get("alfa_ad_version")
                      or config.get("version") or "")
    run.date = _date(out, config)
    for cls in run.class_names:
        stats = _json(out / "class_stats" / f"{cls}.json")
        if stats:
            run.class_stats[cls] = stats
    return run
