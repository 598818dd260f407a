"""``ablation.csv`` and ``ablation.md``: one row per configuration of ``alfa-ad ablate``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from ..io.atomic import atomic_write_text
from .tables import METRIC_TITLES, METRICS, fmt

DESCRIBE = ("configuration", "prompt sources", "S_c", "aligner", "scales", "window strides", "text projection",
            "global in map", "refine")


def _latency(row) -> str:
    return "" if row.latency_ms is None else f"{row.latency_ms:.1f}"


def ablation_rows(rows: Sequence[Any]) -> list[list[str]]:
    """Header + one line per configuration (mean over classes, percent), for tables and the terminal."""
    out = [[*DESCRIBE, *[METRIC_TITLES[m] for m in METRICS], "ms / image"]]
    for row in rows:
        d, mean = row.config.describe(), row.mean()
        out.append([d[k] for k in DESCRIBE] + [fmt(mean.get(m)) for m in METRICS] + [_latency(row)])
    return out


def write_ablation(out: Path, rows: Sequence[Any], header: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/ablation.csv`` (per class and mean, fractions) and ``out/ablation.md``."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*DESCRIBE, "class", *METRICS, "latency_ms_per_image"])
    for row in rows:
        d = row.config.describe()
        per_class = dict(row.metrics)
        if len(per_class) != 1:
            per_class["mean"] = row.mean()
        for cls, m in per_class.items():
            writer.writerow([d[k] for k in DESCRIBE] + [cls] + ["" if m.get(k) is None else f"{m[k]:.6f}"
                                                             for k in METRICS] + [_latency(row)])
    csv_path = atomic_write_text(out / "ablation.csv", buf.getvalue())
    table = ablation_rows(rows)
    lines = ["# alfa-ad ablation", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Metrics in percent, mean over classes; latency: the stages each configuration uses, timed per "
              "image in one shared pass (docs/method.md, section 11).", ""]
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    md_path = atomic_write_text(out / "ablation.md", "\n".join(lines) + "\n")
    return csv_path, md_path
