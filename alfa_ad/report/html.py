"""``report.html``: one self-contained page per run folder, built from its files only.

The page needs no server and no network: styles, script, data and figures are inline;
images are the run's own overlays (``overlays/``) and thumbnails (``report_files/``),
linked by relative paths. :func:`write_report` can be rerun at any time
(``alfa-ad report RUN_DIR``), also on folders written by older versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from ..io.atomic import atomic_write_text
from . import gallery
from .plots import class_figure
from .runfiles import METRIC_COLUMNS, RunFolder, as_float, as_label, load_run
from .scale import pixel_curves
from .thumbs import ASSETS, thumbnail

MAX_REFERENCE_THUMBS = 32

_env = jinja2.Environment(loader=jinja2.PackageLoader("alfa_ad.report", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


MIN_HISTOGRAM_IMAGES = 5  # fewer unlabelled scores make no histogram worth drawing (or importing matplotlib for)


def _has_a_figure(labels: list[int | None], scores: list[float], pixel: Any) -> bool:
    """Whether a class's figure shows anything: labels (curves), pixel statistics, or
    enough scores for a histogram."""
    return bool(scores) and (any(v is not None for v in labels) or pixel is not None
                             or len(scores) >= MIN_HISTOGRAM_IMAGES)


def _pct(value: Any, std: Any = None) -> str:
    v = as_float(value)
    if v is None:
        return "undefined"
    s = as_float(std)
    return f"{100 * v:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def _text(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):  # e.g. ["template", "llm", "llm"]
            counts = {v: value.count(v) for v in dict.fromkeys(value)}
            return ", ".join(k if n == 1 else f"{k} ×{n}" for k, n in counts.items())
        return ", ".join(_text(v) for v in value)
    return str(value)


def _header(run: RunFolder) -> list[tuple[str, str]]:
    c = run.config
    source = c.get("weights_source") if isinstance(c.get("weights_source"), dict) else {}
    seeds = run.seeds.get("seeds") if run.seeds else None
    rows = [("weights", run.weights_label), ("model", _text(c.get("model") or source.get("model"))),
            ("pretrained", _text(c.get("pretrained"))), ("method", _text(c.get("method"))),
            ("aligner", _text(c.get("aligner"))), ("prompt sources", _text(c.get("prompt_sources"))),
            ("shots", _text(c.get("shots"))), ("seeds" if seeds else "seed", _text(seeds or c.get("seed"))),
            ("scales", _text(c.get("scales"))), ("window strides", _text(c.get("window_strides"))),
            ("data", _text(c.get("data"))),
            ("alfa-ad version", _text(run.version)), ("date", _text(run.date))]
    if source.get("file"):
        sha = str(source.get("sha256") or "")
        rows.insert(1, ("weights file", f"{source['file']}" + (f" (sha256 {sha[:16]}…)" if sha else "")))
    if run.rows:
        rows.append(("images", f"{len(run.rows)} scored, {len(run.errors)} skipped"
                     + (f", {run.seconds:.1f} s" if run.seconds is not None else "")))
    return rows


def _metrics_table(run: RunFolder) -> dict[str, Any] | None:
    head = ["class", *[t for _, t in METRIC_COLUMNS]]
    if run.seeds and isinstance(run.seeds.get("metrics"), dict):
        body = []
        for cls, m in run.seeds["metrics"].items():
            if not isinstance(m, dict) or (cls == "mean" and len(run.seeds["metrics"]) <= 2):
                continue
            cells = [m.get(k) if isinstance(m.get(k), dict) else {} for k, _ in METRIC_COLUMNS]
            body.append([cls, *[_pct(v.get("mean"), v.get("std")) for v in cells]])
        return {"head": head, "body": body, "note": "percent, mean ± standard deviation over seeds "
                + _text(run.seeds.get("seeds"))}
    if not run.metrics:
        return None
    body = [[cls, *[_pct(m.get(k)) for k, _ in METRIC_COLUMNS]] for cls, m in run.metrics.items()]
    if len(run.metrics) > 1 and run.mean:
        body.append(["mean", *[_pct(run.mean.get(k)) for k, _ in METRIC_COLUMNS]])
    return {"head": head, "body": body, "note": "percent"}


def _references(run: RunFolder, cls: str) -> list[dict[str, str]]:
    refs = []
    for i, path in enumerate(run.references(cls)):
        ref = {"path": path, "thumb": ""}
        if i < MAX_REFERENCE_THUMBS and Path(path).is_file():
            rel = f"{ASSETS}/references/{cls}/{i:03d}.jpg"
            if thumbnail(Path(path), run.out / rel):
                ref["thumb"] = gallery.href(rel)
        refs.append(ref)
    return refs


def _classes(run: RunFolder) -> tuple[list[dict[str, Any]], dict[str, gallery.Operating]]:
    out, operating = [], {}
    for cls in run.class_names:
        rows = [r for r in run.rows if str(r.get("class", "")) == cls and as_float(r.get("score")) is not None]
        labels = [as_label(r.get("label")) for r in rows]
        scores = [float(as_float(r.get("score"))) for r in rows]
        op = gallery.operating_threshold(run, cls, labels, scores)
        operating[cls] = op
        stats, facts = run.class_stats.get(cls, {}), run.classes.get(cls, {})
        pixel = pixel_curves(run.out / "class_stats" / f"{cls}.npz") if stats else None
        th = run.thresholds(cls)
        out.append({
            "name": cls, "n": len(rows), "n_anomalous": sum(v == 1 for v in labels),
            "n_normal": sum(v == 0 for v in labels),
            "figure": class_figure(labels, scores, pixel, op.threshold, op.name, run.metrics.get(cls, {}))
            if _has_a_figure(labels, scores, pixel) else "",
            "operating": f"{op.name}: {op.threshold:.4f}" if op.threshold is not None else "",
            "thresholds": str(th.get("description") or _text(th)) if th else "",
            "scale": str(stats.get("scale_description") or "") or
                     "overlays of this run use each image's own range (written before per-class scales)",
            "prompt_sources": _text(facts.get("prompt_sources")), "kept": _text(facts.get("mean_prompts_kept")),
            "bank": _text(facts.get("memory_bank_size")) if facts.get("memory_bank_size") is not None else "",
            "references": _references(run, cls), "warnings": [str(w) for w in stats.get("warnings") or []],
        })
    return out, operating


def _seed_links(run: RunFolder) -> list[dict[str, str]]:
    return [{"name": d.name, "href": gallery.href(f"{d.name}/report.html")} for d in run.seed_dirs
            if (d / "report.html").is_file()]


def render_report(run: RunFolder) -> str:
    classes, operating = _classes(run)
    prompts: dict[str, list[str]] = {}
    items = gallery.build_items(run, operating, prompts)
    config = [(k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)
              for k, v in run.config.items()]
    return _env.get_template("report.html").render(
        title=f"alfa-ad report: {run.out.name}", banner=None if run.weights_meaningful else run.weights_label,
        header=_header(run), config=config, table=_metrics_table(run), classes=classes, seed_links=_seed_links(run),
        data={"items": items, "prompts": prompts}, n_items=len(items), errors=run.errors, warnings=run.warnings,
        class_names=sorted({i["cls"] for i in items}), types=sorted({i["type"] for i in items}),
        has_decisions=any(i["decision"] for i in items))


def write_report(out: str | Path, *, seeds: bool = False) -> Path:
    """(Re)write ``out/report.html`` from the run folder's files; ``seeds``: first rebuild the
    reports of its ``seed_*`` sub-folders. Returns the page's path."""
    out = Path(out)
    run = load_run(out)
    if seeds:
        for sub in run.seed_dirs:
            write_report(sub)
    page = out / "report.html"
    atomic_write_text(page, render_report(run))
    return page
