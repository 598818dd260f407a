"""VLM second opinions for one image (:func:`explain_image`) and for a finished run
(:func:`vlm_explain_run`), and the optional score fusion (:func:`fuse_score`).

This module sits above the detector and the runner: it takes a
:class:`~alfa_ad.detector.Detector` object (duck-typed, not imported) or a run's
output folder, and uses :mod:`alfa_ad.llm.vlm` for the request itself.

**The VLM never changes the anomaly score** unless fusion is asked for
(``fuse=WEIGHT``): then, for the images that got a verdict,

    fused = (1 - w) * score + w * p,   p = confidence if anomalous else 1 - confidence

a convex combination of our score and the VLM's probability that the image is
anomalous; it stays in [0, 1], is monotone in both, and w = 0 leaves the score
unchanged.  The unfused score is kept (``score_unfused``).  Only the images that
were sent to the VLM are fused, so scores of a run are then not all on one
scale and metrics are not recomputed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io.atomic import atomic_write_text
from ..io.images import ImageLoadError, iter_image_files
from .client import LLMClient, LLMConfig, LLMError
from .rules import Rules
from .vlm import ask_verdict, build_vlm_messages, heat_overlay, open_vlm_cache

__all__ = ["fuse_score", "explain_image", "vlm_explain_run"]


def fuse_score(score: float, verdict: dict[str, Any], weight: float = 0.5) -> float:
    """``(1 - weight) * score + weight * p`` with ``p`` the VLM's probability of "anomalous"."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    conf = min(1.0, max(0.0, float(verdict["confidence"])))
    p = conf if verdict["anomalous"] else 1.0 - conf
    return (1.0 - weight) * float(score) + weight * p


def _client(config: LLMConfig | None, client: LLMClient | None) -> LLMClient:
    if client is not None:
        return client
    if config is None:
        raise ValueError("give an LLMConfig (model, base URL) or an LLMClient for the VLM")
    return LLMClient(config)


def _rules_for(rules: Rules | Sequence[str] | None, class_name: str) -> list[str]:
    if rules is None:
        return []
    if isinstance(rules, Rules):
        return rules.for_class(class_name)
    return list(rules)


def explain_image(
    detector: Any,
    image: Any,
    class_name: str = "object",
    *,
    config: LLMConfig | None = None,
    client: LLMClient | None = None,
    normals: Sequence[Any] | None = None,
    k: int = 3,
    rules: Rules | Sequence[str] | None = None,
    n_descriptors: int = 5,
    cache_dir: str | os.PathLike[str] | None = None,
    cache: Any = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Score ``image`` with ``detector``, then ask the VLM for a verdict; return a JSON-ready dict.

    ``normals``: reference images (default: the detector's fitted normals); at most ``k`` are sent.
    The dict holds ``score``, ``decision`` (ours), ``vlm`` (verdict, raw reply, model, server,
    date, whether it came from the cache) and what was sent (``descriptors``, ``rules``, ``n_normals``).
    Raises :class:`~alfa_ad.llm.client.LLMError` when no valid verdict comes back.
    """
    vlm = _client(config, client)
    result = detector(image, class_name, explain=n_descriptors)
    descriptors = [d.text for d in result.descriptors] or list(detector.descriptors(class_name))[:n_descriptors]
    refs = list(normals if normals is not None else getattr(detector, "normals", []))[: max(0, k)]
    class_rules = _rules_for(rules, class_name)
    messages = build_vlm_messages(image, class_name, overlay=heat_overlay(image, result.anomaly_map), normals=refs,
                                  rules=class_rules, descriptors=descriptors, score=result.score)
    own = cache is None
    cache = open_vlm_cache(cache_dir) if own else cache
    try:
        record = ask_verdict(vlm, messages, cache=cache, refresh=refresh, label=f"image {_name(image)}")
    finally:
        if own:
            cache.close()
    return {"score": result.score, "decision": result.summary()["decision"], "class": class_name,
            "weights": result.weights, "descriptors": descriptors, "rules": class_rules, "n_normals": len(refs),
            "vlm": record}


def _name(image: Any) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__


def _overlay_path(out: Path, row: dict[str, Any]) -> Path | None:
    if row.get("key") and (out / "overlays" / f"{row['key']}.png").is_file():
        return out / "overlays" / f"{row['key']}.png"
    path = Path(str(row.get("path", "")))
    folder = out / "overlays" / str(row.get("class", "")) / (str(row.get("defect_type") or "") or "images")
    for name in (f"{path.stem}.png", f"{path.name}.png"):
        if (folder / name).is_file():
            return folder / name
    return None


def _run_references(out: Path) -> dict[str, list[str]]:
    """Normal references per class recorded by a few-shot run (metrics.json ``classes``)."""
    try:
        data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict):
        return {}
    return {c: list(f.get("references", [])) for c, f in classes.items() if isinstance(f, dict)}


def _write_scores(out: Path, data: dict[str, Any]) -> None:
    atomic_write_text(out / "scores.json", json.dumps(data, indent=1))
    if (out / "scores.csv").is_file():
        from ..outputs.writers import CSV_FIELDS

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data.get("images", []))
        atomic_write_text(out / "scores.csv", buf.getvalue())


def vlm_explain_run(
    out_dir: str | os.PathLike[str],
    n: int,
    *,
    config: LLMConfig | None = None,
    client: LLMClient | None = None,
    rules: Rules | Sequence[str] | None = None,
    normals: str | os.PathLike[str] | Sequence[Any] | None = None,
    k: int = 3,
    descriptors: Callable[[str], Sequence[str]] | None = None,
    fuse: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Ask the VLM about the ``n`` highest-scoring images of a finished run in ``out_dir``.

    Reads ``scores.json``, sends each image with its overlay (``overlays/...`` of the run),
    the class rules, descriptors (the row's, else ``descriptors(class)``) and up to ``k``
    normal references (``normals``: a folder, with per-class subfolders or not, or a list;
    default: the references a few-shot run recorded), and writes each verdict into the
    image's row under ``"vlm"`` (``{"error": ...}`` when it failed; the batch goes on).
    ``fuse``: a weight in [0, 1] for :func:`fuse_score` (None: scores unchanged).
    ``scores.json`` is rewritten atomically after each image.  Returns
    ``{"asked": ..., "answered": ..., "errors": [...]}``.
    """
    out = Path(out_dir)
    if fuse is not None and not 0.0 <= fuse <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {fuse}")
    try:
        data = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{out}: no scores.json (run 'alfa-ad run' first)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{out / 'scores.json'}: unreadable ({e})") from None
    rows = [r for r in data.get("images", []) if isinstance(r.get("score"), (int, float))]
    top = sorted(rows, key=lambda r: float(r.get("score_unfused", r["score"])), reverse=True)[: max(0, n)]
    vlm = _client(config, client)
    recorded = _run_references(out)
    errors: list[str] = []
    answered = 0
    cache = open_vlm_cache(cache_dir)
    try:
        for i, row in enumerate(top, 1):
            cls = str(row.get("class", "object"))
            if on_progress:
                on_progress(i, len(top), str(row.get("path")))
            try:
                refs = _normals_for(normals, cls, recorded)[: max(0, k)]
                descs = [d["text"] if isinstance(d, dict) else d[0] if isinstance(d, list) else str(d)
                         for d in row.get("descriptors", [])]
                if not descs and descriptors is not None:
                    descs = list(descriptors(cls))[:5]
                messages = build_vlm_messages(row["path"], cls, overlay=_overlay_path(out, row), normals=refs,
                                              rules=_rules_for(rules, cls), descriptors=descs,
                                              score=float(row.get("score_unfused", row["score"])))
                record = ask_verdict(vlm, messages, cache=cache, refresh=refresh, label=f"image {row['path']}")
            except (LLMError, ImageLoadError, OSError, ValueError) as exc:
                row["vlm"] = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
                errors.append(row["vlm"]["error"])
            else:
                answered += 1
                row["vlm"] = record
                if fuse is not None:
                    base = float(row.get("score_unfused", row["score"]))
                    row["score_unfused"] = base
                    row["score"] = fuse_score(base, record["verdict"], fuse)
                    record["fused_score"], record["fusion_weight"] = row["score"], fuse
            _write_scores(out, data)
    finally:
        cache.close()
    return {"asked": len(top), "answered": answered, "errors": errors}


def _normals_for(normals: Any, cls: str, recorded: dict[str, list[str]]) -> list[Any]:
    if normals is None:
        return list(recorded.get(cls, []))
    if isinstance(normals, (str, os.PathLike)):
        folder = Path(normals)
        return list(iter_image_files(folder / cls if (folder / cls).is_dir() else folder))
    return list(normals)
