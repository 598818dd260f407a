"""Metric tables: per class and mean, in percent; seed summaries (mean ± std)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io.atomic import atomic_write_text

METRICS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pro", "pixel_f1_max")
METRIC_TITLES = {"image_auroc": "img AUROC", "image_aupr": "img AUPR", "image_f1_max": "img F1-max",
                 "pixel_auroc": "px AUROC", "pro": "PRO", "pixel_f1_max": "px F1-max"}


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


def _md_rows(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _md_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_md_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_md_value(v) for v in value)
    return str(value)


def markdown_report(rows: list[list[str]], record: dict[str, Any], classes: dict[str, dict] | None = None,
                    note: str = "Values in percent.") -> str:
    """The metric table, then the run record (configuration) and per-class facts
    (prompt sources, references, thresholds, decisions), all from the one record."""
    out = [f"# alfa-ad results\n\nWeights: {record.get('weights')}\n", *_md_rows(rows), "", note, "",
           "## Configuration", ""]
    for key, value in record.items():
        if key in ("weights_source", "detector"):
            continue
        out.append(f"- {key}: {_md_value(value)}")
    ws = record.get("weights_source") or {}
    if ws.get("file"):
        out.append(f"- weights file: {ws['file']} (sha256 {ws.get('sha256')})")
    for cls, facts in (classes or {}).items():
        out += ["", f"## Class {cls}", ""]
        for key, value in facts.items():
            if key == "thresholds" and isinstance(value, dict):
                out.append(f"- thresholds: image {value['image']:.4f}, pixel {value['pixel']:.4f} "
                           f"({value.get('description', '')})")
            elif key == "references" and isinstance(value, list):
                out.append(f"- references ({len(value)}): " + ", ".join(value))
            else:
                out.append(f"- {key}: {_md_value(value)}")
    return "\n".join(out) + "\n"


def write_metric_files(out: Path, header: dict[str, Any], metrics: dict[str, dict], classes: dict[str, dict],
                       extra: dict[str, Any]) -> None:
    """metrics.json / .csv / .md; removes them when there is nothing to measure."""
    if not metrics:  # no stale metrics of an earlier run may stay
        for name in ("metrics.json", "metrics.csv", "metrics.md"):
            (out / name).unlink(missing_ok=True)
        return
    mean = mean_over(metrics.values())
    atomic_write_text(out / "metrics.json", json.dumps(
        {**header, "metrics": metrics, "mean": mean, "classes": classes, **extra}, indent=1))
    table = metrics_table(metrics, mean)
    buf = io.StringIO()
    csv.writer(buf).writerows(table)
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    atomic_write_text(out / "metrics.md", markdown_report(table, header["config"], classes))


def aggregate_seeds(per_seed: Sequence[dict[str, dict]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean and standard deviation (population, as over the paper's 5 seeds) per class and
    metric, from each seed's ``{class: metrics}``."""
    classes = list(dict.fromkeys(c for m in per_seed for c in m))
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for cls in [*classes, "mean"]:
        per = [mean_over(m.values()) if cls == "mean" else m.get(cls, {}) for m in per_seed]
        out[cls] = {}
        for name in METRICS:
            vals = [m[name] for m in per if m.get(name) is not None]
            out[cls][name] = {"mean": float(np.mean(vals)) if vals else None,
                              "std": float(np.std(vals)) if vals else None, "n": len(vals)}
    return out


def write_seed_summary(out: Path, record: dict[str, Any], seeds: Sequence[int], summary: dict) -> list[list[str]]:
    rows = [["class", *[METRIC_TITLES[m] for m in METRICS]]]
    for cls, m in summary.items():
        if cls == "mean" and len(summary) <= 2:
            continue
        rows.append([cls, *[fmt(m[k]["mean"], m[k]["std"]) for k in METRICS]])
    atomic_write_text(out / "metrics_seeds.json", json.dumps(
        {"alfa_ad_version": record.get("version"), "weights": record.get("weights"), "config": record,
         "seeds": list(seeds), "metrics": summary}, indent=1))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(out / "metrics_seeds.csv", buf.getvalue())
    atomic_write_text(out / "metrics_seeds.md", markdown_report(
        rows, {**record, "seeds": list(seeds)}, note="Values in percent, mean ± standard deviation over seeds."))
    return rows
