"""The gallery's items: one per scored image, with outcome, order and thumbnail.

Operating threshold of a class (for "misclassified" and the histograms): the calibrated
image threshold when the run has one (then the run's own ``decision`` column is used),
otherwise the F1-max threshold of the class's image scores against its test labels, an
after-the-fact threshold that the report names as such. Default order: misclassified
images first, most wrong first (the lowest-scored anomalies and the highest-scored
normals, by distance to the threshold), then the correct ones, closest calls first, then
unlabelled images by score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .runfiles import RunFolder, as_float, as_label
from .thumbs import ASSETS, thumb_path, thumbnail


@dataclass
class Operating:
    threshold: float | None
    name: str  # shown in the report


def operating_threshold(run: RunFolder, cls: str, labels: list[int | None], scores: list[float]) -> Operating:
    th = run.thresholds(cls)
    if th and as_float(th.get("image")) is not None:
        fpr = th.get("fpr")
        return Operating(float(th["image"]), f"calibrated threshold{f' (FPR {fpr:g})' if isinstance(fpr, float) else ''}")
    pairs = [(v, s) for v, s in zip(labels, scores) if v is not None]
    if pairs and 0 < sum(v for v, _ in pairs) < len(pairs):
        from sklearn.metrics import precision_recall_curve  # only with labels: a 3 s import otherwise spared

        precision, recall, thresholds = precision_recall_curve([v for v, _ in pairs], [s for _, s in pairs])
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        best = int(np.argmax(f1[:-1]))
        return Operating(float(thresholds[best]), "F1-max threshold (chosen on these test labels)")
    return Operating(None, "")


def _key(row: dict[str, Any], out: Path) -> str:
    if row.get("key"):
        return str(row["key"])
    path = Path(str(row.get("path", "")))
    stem = "/".join([str(row.get("class", "")), str(row.get("defect_type") or "images"), path.stem])
    if not (out / "overlays" / f"{stem}.png").is_file() and (out / "overlays" / f"{stem[:-len(path.stem)]}{path.name}.png").is_file():
        return stem[: -len(path.stem)] + path.name
    return stem


def href(relative: str) -> str:
    return quote(relative, safe="/")


def _vlm(row: dict[str, Any]) -> str:
    """One line for a VLM second opinion (``alfa-ad run --vlm-explain``), or ""."""
    vlm = row.get("vlm")
    if not isinstance(vlm, dict):
        return ""
    if vlm.get("error"):
        return f"VLM: no verdict ({vlm['error']})"
    v = vlm.get("verdict") or {}
    text = f"VLM {vlm.get('model', '')}: {'anomalous' if v.get('anomalous') else 'normal'}"
    if isinstance(v.get("confidence"), (int, float)):
        text += f" (confidence {v['confidence']:.2f})"
    for k in ("defect_type", "location", "reason"):
        if v.get(k):
            text += f"; {k.replace('_', ' ')}: {v[k]}"
    return text


def _decision(row: dict[str, Any]) -> str:
    d = row.get("decision")
    if isinstance(d, bool):
        return "anomalous" if d else "normal"
    return str(d) if d in ("anomalous", "normal") else ""


def _descriptors(row: dict[str, Any], top: int = 5) -> list[list[Any]]:
    out = []
    for d in row.get("descriptors") or []:
        if isinstance(d, dict) and d.get("text"):
            out.append([str(d["text"]), str(d.get("side") or ""), as_float(d.get("similarity"))])
        elif isinstance(d, (list, tuple)) and d:
            out.append([str(d[0]), "", as_float(d[1]) if len(d) > 1 else None])
    return out[:top]


def build_items(run: RunFolder, operating: dict[str, Operating],
                prompts: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Gallery items (JSON-ready) in default order; writes missing thumbnails.

    ``prompts[cls]`` collects the class's kept prompt texts; items refer to them by index."""
    items = []
    index: dict[str, dict[str, int]] = {}
    for row in run.rows:
        cls = str(row.get("class", ""))
        key = _key(row, run.out)
        score, label, decision = as_float(row.get("score")), as_label(row.get("label")), _decision(row)
        op = operating.get(cls, Operating(None, ""))
        predicted = decision or ("" if op.threshold is None or score is None else
                                 ("anomalous" if score >= op.threshold else "normal"))
        outcome = ""
        if label is not None and predicted:
            outcome = {(1, "anomalous"): "TP", (0, "normal"): "TN", (1, "normal"): "FN", (0, "anomalous"): "FP"}[
                (label, predicted)]
        overlay = run.out / "overlays" / f"{key}.png"
        item: dict[str, Any] = {
            "key": key, "name": Path(str(row.get("path", key))).name, "cls": cls,
            "type": str(row.get("defect_type") or ""), "label": label, "score": score, "decision": decision,
            "predicted": predicted, "outcome": outcome, "path": str(row.get("path", "")),
            "margin": None if op.threshold is None or score is None else abs(score - op.threshold),
            "kept": [row.get(k) for k in ("kept_normal", "total_normal", "kept_abnormal", "total_abnormal")],
            "desc": _descriptors(row), "img": "", "thumb": "", "mask": "", "area": as_float(row.get("mask_area")),
            "vlm": _vlm(row),
        }
        if overlay.is_file():
            item["img"] = href(f"overlays/{key}.png")
            ok = thumbnail(overlay, thumb_path(run.out, key))
            item["thumb"] = href(f"{ASSETS}/thumbs/{key}.jpg") if ok else item["img"]
        if (run.out / "masks" / f"{key}.png").is_file():
            item["mask"] = href(f"masks/{key}.png")
        kept = row.get("kept_prompts")
        if isinstance(kept, dict):
            table, seen = prompts.setdefault(cls, []), index.setdefault(cls, {})
            item["kp"] = []
            for side in ("normal", "abnormal"):
                ids = []
                for text in kept.get(side) or []:
                    if text not in seen:
                        seen[text] = len(table)
                        table.append(str(text))
                    ids.append(seen[text])
                item["kp"].append(ids)
        items.append(item)
    items.sort(key=_order)
    for rank, item in enumerate(items):
        item["rank"] = rank
    return items


def _order(item: dict[str, Any]) -> tuple:
    margin = item["margin"] if item["margin"] is not None else 0.0
    if item["outcome"] in ("FN", "FP"):
        return (0, -margin, item["key"])
    if item["outcome"]:
        return (1, margin, item["key"])
    return (2, -(item["score"] if item["score"] is not None else -np.inf), item["key"])
