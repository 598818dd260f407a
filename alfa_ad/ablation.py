"""``alfa-ad ablate``: the paper's Table 2 / Table 6 style grid in one pass over the data.

The grid is a declarative list of :class:`AblationConfig` (prompt sources, contextual
scoring, aligner, scales, text projection); add a field and rows to extend it (few-shot
fusion, say).  Work is shared wherever the math allows: each image goes through the
backbone once (``f(x)``, tokens, ``z^{L-1}``), each aligner prepares once per image and
computes each window scale once; only the cheap text side (prompt selection, eq. 4,
eq. 10-12, aggregation, smoothing) runs per configuration.

**Latency per image** of a configuration is the sum of the stages it uses (backbone
pass, its aligner's preparation and its scales' local embeddings, its scoring), each
timed once per image here: what a standalone run of that configuration spends in the
model, without data loading and file writing.  Images are scored whole (no tiling),
as in the papers.

**Method rows** (``methods``: registry names or ``all``) each run their own :class:`Detector`
on the same backbone object over the same whole images, into the same metrics and table;
their latency is the wall time of ``predict`` per image (preprocessing, model, map at image
size).  musc (``mutual``) scores each class as one batch (``alfa-ad run``'s groups), so its
scores depend on the batch; patchknn (``needs_normals``) is fitted on ``normals`` (``fit``:
``alfa-ad run``'s coreset and seed), else left out with the reason.  The others run zero-shot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .aligners import build_aligner
from .detector import Detector
from .engines.local import call_size
from .evaluation.resize import resize_for_evaluation
from .io.datasets import Sample, ground_truth_mask
from .io.images import ImageLoadError, load_image
from .ablation_grid import FULL, GRID, AblationConfig, applicable  # noqa: F401  (FULL: re-exported)
from .methods.alfa_head import AlfaHead
from .outputs.tables import METRICS, mean_over
from .registry import METHODS, trait
from .runner import ClassEval
from .scoring.refine import RegionRefiner
from .scoring.windows import harmonic_mean
from .scoring.zero_shot import image_score

FIT: Mapping[str, Any] = {"coreset": 4096, "seed": 0}  # alfa-ad run's defaults for the references


@dataclass
class AblationRow:
    config: AblationConfig | MethodConfig
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # class -> metrics
    seconds: float = 0.0  # summed latency over images
    images: int = 0

    @property
    def latency_ms(self) -> float | None:
        return 1000 * self.seconds / self.images if self.images else None

    def mean(self) -> dict[str, float | None]:
        return mean_over(self.metrics.values())


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t


def run_ablation(detector: Detector, dataset: dict[str, list[Sample]], grid: Sequence[AblationConfig] = GRID,
                 class_names: dict[str, str] | None = None, on_progress: Callable[[str, int, int], None] | None = None,
                 on_error: Callable[[str], None] | None = None, methods: Sequence[str | MethodConfig] | str = (),
                 normals: Mapping[str, Sequence[Any]] | None = None, on_skip: Callable[[str], None] | None = None,
                 fit: Mapping[str, Any] = FIT) -> list[AblationRow]:
    """Score ``dataset`` under every applicable configuration of ``grid`` (ALFA, zero-shot), then
    one row per method of ``methods`` (:func:`method_configs`) on the same model, the ``needs_normals``
    ones fitted on ``normals`` (class -> images) with ``fit_normals(**fit)``; ``on_skip`` gets why a
    method row was left out.  ``on_progress(label, n, total)``: label is the class, ``"method: class"``."""
    specs, names = method_configs(methods), class_names or {}  # unknown methods fail before any image is scored
    rows = _grid_rows(detector, dataset, grid, names, on_progress, on_error) if grid else []
    return rows + _method_rows(detector, dataset, specs, names, (normals or {}, fit), on_progress, on_error, on_skip)


def _grid_rows(detector: Detector, dataset: dict[str, list[Sample]], grid: Sequence[AblationConfig],
               class_names: dict[str, str], on_progress, on_error) -> list[AblationRow]:
    """The grid's rows: one shared backbone pass per image, the text side per configuration."""
    if detector.method.name != "alfa":
        raise ValueError("the ablation grid is ALFA's; build the detector with method 'alfa'")
    bb = detector.backbone
    available = set()
    for cls in dataset:
        available |= {s for s, n in detector.prompts(class_names.get(cls, cls)).sources.items() if n}
    configs = applicable(grid, available)
    if not configs:
        raise ValueError(f"no configuration of the grid applies (prompt sources here: {', '.join(sorted(available))})")
    base = detector.method.head
    windows = sorted({w for c in configs for w in c.windows})  # (scale, stride) pairs
    heads = {name: AlfaHead(build_aligner(name, bb), bb.grid, bb.image_size, [s for s, _ in windows], base.temperature,
                            base.k, base.blur.sigma, strides=[t for _, t in windows]).to(bb.device)
             for name in dict.fromkeys(c.aligner for c in configs)}
    refiner = RegionRefiner(bb) if any(c.refine for c in configs) else None
    rows = [AblationRow(c) for c in configs]
    timer = _Timer(bb.device)
    for cls, samples in dataset.items():
        name = class_names.get(cls, cls)
        ps = detector.prompts(name)
        normal_all, abnormal_all = detector.class_text(name)
        text = {}
        for c in configs:  # prompt embeddings of each source selection (a class may lack a source)
            kn = torch.tensor([s in c.sources for s in ps.normal_sources], device=normal_all.device)
            ka = torch.tensor([s in c.sources for s in ps.abnormal_sources], device=abnormal_all.device)
            text[c.sources] = (normal_all[kn], abnormal_all[ka]) if kn.any() and ka.any() else None
        evals = [ClassEval() for _ in configs]
        warnings: list[str] = []
        for i, s in enumerate(samples):
            im = _load(s, on_error)
            if im is None:
                continue
            truth = ground_truth_mask(s, im.size, warnings) if s.label is not None else None
            with torch.inference_mode():
                pixels = bb.preprocess([im])
                feats, t_fwd = timer(lambda: base.encode(pixels))
                locals_, t_local = {}, {}
                for al, head in heads.items():
                    state, t_prep = timer(lambda: head.aligner.prepare(feats))
                    t_local[al] = {"prepare": t_prep}
                    for w, (index, _) in zip(windows, head.geometry()):
                        locals_[al, w], t_local[al][w] = timer(lambda: head.aligner(feats, state, index))
                affinities, t_refine = timer(lambda: refiner.affinities(pixels)) if refiner else (None, 0.0)
                for row, ev, c in zip(rows, evals, configs):
                    if text[c.sources] is None:
                        continue
                    head = heads[c.aligner]
                    (score, amap), t_score = timer(lambda: _score(head, feats, locals_, c, text[c.sources], windows))
                    if c.refine:
                        amap, t_apply = timer(lambda: refiner.apply(amap[None], affinities).maps[0])
                        t_score += t_apply + t_refine
                    row.seconds += t_fwd + t_local[c.aligner]["prepare"] + sum(t_local[c.aligner][w] for w in c.windows)
                    row.seconds += t_score
                    row.images += 1
                    _collect(ev, s, score, amap, truth, im.size)
            if on_progress:
                on_progress(cls, i + 1, len(samples))
        for row, ev in zip(rows, evals):
            if ev.labels:
                row.metrics[cls] = ev.metrics()
    return rows


def _score(head: AlfaHead, feats, locals_, c: AblationConfig, text, windows) -> tuple[float, torch.Tensor]:
    ad = head.adapt(feats.g, *text, contextual=c.contextual)
    geometry = dict(zip(windows, head.geometry()))
    maps = [head.window_map(feats.g, locals_[c.aligner, w], ad.local_classes, geometry[w][1], c.text_projection)
            for w in c.windows]
    if c.global_in_map:
        maps.append(ad.global_scores.view(-1, 1, 1).expand_as(maps[0]))
    patch_map = harmonic_mean(torch.stack(maps), dim=0)
    return float(image_score(ad.global_scores, patch_map)[0]), head.finish(patch_map)[0]


def _collect(ev: ClassEval, s: Sample, score: float, amap, truth, size: tuple[int, int] | None = None) -> None:
    """An image's score and map (image size; with ``size``: model resolution, upsampled as predict does)."""
    if s.label is None:
        return
    ev.labels.append(s.label)
    ev.scores.append(score)
    if truth is not None:
        if size is not None:
            amap = torch.nn.functional.interpolate(amap[None, None].float().cpu(), size=(size[1], size[0]),
                                                   mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
        ev.pixels.add(resize_for_evaluation(truth.astype(np.float32)) >= 0.5,
                      resize_for_evaluation(np.asarray(amap, dtype=np.float32)))


def _load(s: Sample, on_error):
    """The decoded image, or None (reported to ``on_error``) when it cannot be read."""
    try:
        return load_image(s.path)
    except ImageLoadError as exc:
        if on_error:
            on_error(str(exc))
        return None


# ------------------------------------------------------------------ method rows
ALL_METHODS = "all"  # every registered method but alfa (ALFA is the grid)
KEY_OPTIONS = ("layers", "degrees", "layer", "masking", "rotations", "top_percent")  # named in labels when present


@dataclass(frozen=True)
class MethodConfig:
    """A method row: registry method ``method`` (Detector keyword ``options``) on the grid's
    model; ``name`` and ``columns`` (the table's description) come from the built detector."""

    method: str
    options: tuple[tuple[str, Any], ...] = ()
    name: str = ""
    columns: tuple[tuple[str, str], ...] = ()

    def describe(self) -> dict[str, str]:
        return {"configuration": self.name or self.method, **dict(self.columns)}


def method_configs(methods: Sequence[str | MethodConfig] | str) -> list[MethodConfig]:
    """``"winclip,musc"``, ``"all"`` or names / :class:`MethodConfig` -> configs, repeats dropped;
    ``ValueError`` (one line, naming it) for a name the registry lacks."""
    out: list[MethodConfig] = []
    for item in methods.split(",") if isinstance(methods, str) else methods:
        if isinstance(item, MethodConfig):
            out.append(replace(item, method=METHODS.check(item.method)))
        elif item.strip() == ALL_METHODS:
            out += [MethodConfig(n) for n in METHODS.names() if n != "alfa"]
        elif item.strip():
            out.append(MethodConfig(METHODS.check(item.strip())))
    return list(dict.fromkeys(out))


def _method_detector(detector: Detector, spec: MethodConfig) -> Detector:
    """``spec``'s detector on ``detector``'s backbone object (no second model load), prompt files,
    prompt classes and text cache; whole images (no tiling)."""
    cfg = detector.config
    det = Detector(detector.backbone, method=spec.method, prompts=cfg.prompts, llm_prompts=cfg.llm_prompts,
                   tile="none", batch_size=cfg.batch_size, cache_dir=detector.cache_dir, **dict(spec.options))
    for cls, lib in detector.prompt_classes.items():
        det.set_prompt_class(cls, lib)
    return det


def _value(v: Any) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else ",".join(map(str, v)) if isinstance(v, (tuple, list)) \
        else str(v)


def _described(det: Detector, spec: MethodConfig, shots: Sequence[int]) -> MethodConfig:
    """``spec`` labelled with what ``det`` runs: method, zero-/few-shot, batch, key options."""
    m, k = det.method, "-".join(map(str, sorted({min(shots, default=0), max(shots, default=0)})))
    aligner = getattr(m, "aligner", None)
    mode = [f"few-shot, {k} normals per class" if trait(m, "needs_normals") else "zero-shot"]
    if trait(m, "mutual"):
        mode[0] += f", scored per class as one batch (at most {det.images_per_call} images): scores depend on the batch"
    mode += [f"scales {_value(m.scales)}"] if m.scales else []
    mode += [f"{aligner.name} aligner"] if aligner is not None else []
    mode += [f"{o} {_value(getattr(m, o))}" for o in KEY_OPTIONS if getattr(m, o, None) is not None]
    mode += [f"{o} {_value(v)}" for o, v in spec.options if o not in {"scales", "aligner", *KEY_OPTIONS}]
    sources = "none (reads no prompt)" if trait(m, "text_free") else " + ".join(det.config.prompt_sources)
    columns = {"prompt sources": sources, "S_c": m.contextual, "aligner": getattr(aligner, "name", "-"),
               "scales": _value(m.scales) or "-", "window strides": _value(det.config.window_strides) or "-",
               "text projection": getattr(aligner, "text_projection", "-"),
               "global in map": "-", "refine": _value(bool(det.config.refine))}
    return replace(spec, name=f"method {m.name} ({'; '.join(mode)})", columns=tuple(columns.items()))


def _method_rows(detector: Detector, dataset: dict[str, list[Sample]], specs: Sequence[MethodConfig],
                 class_names: dict[str, str], references: tuple[Mapping[str, Sequence[Any]], Mapping[str, Any]],
                 on_progress, on_error, on_skip) -> list[AblationRow]:
    """One row per method: each class's images through that method's ``predict`` (module docstring)."""
    rows, timer = [], _Timer(detector.backbone.device)
    for spec in specs:
        det = _method_detector(detector, spec)
        row, shots, skipped = AblationRow(spec), [], {}
        for cls, samples in dataset.items():
            label, reason = f"{spec.method}: {cls}", _prepare(det, cls, *references)
            if reason is None:
                shots.append(len(references[0].get(cls, ())))
                ev = _score_method(det, class_names.get(cls, cls), samples, row, timer, on_error,
                                   lambda n: on_progress and on_progress(label, n, len(samples)))
                if ev.labels:
                    row.metrics[cls] = ev.metrics()
            else:
                skipped[cls] = reason
                if on_progress:
                    on_progress(label, len(samples), len(samples))
        if skipped and on_skip:
            which = "" if len(skipped) == len(dataset) else f" for {', '.join(skipped)}"
            on_skip(f"method {spec.method}{which}: {'; '.join(dict.fromkeys(skipped.values()))}"
                    + ("" if row.images else " (row left out)"))
        if row.images:
            row.config = _described(det, spec, shots)
            rows.append(row)
    return rows


def _prepare(det: Detector, cls: str, normals: Mapping[str, Sequence[Any]], fit: Mapping[str, Any]) -> str | None:
    """Fit a method that needs normal references on ``cls``'s; the reason it cannot run, or None."""
    if not trait(det.method, "needs_normals"):
        return None
    if not normals.get(cls):
        return "needs normal references (few-shot) and none were given: add --shots k (or --normals DIR)"
    try:
        det.fit_normals(list(normals[cls]), max_leave_one_out=0, **fit)
    except (ImageLoadError, ValueError) as exc:
        return f"normal references of {cls}: {exc}"
    return None


def _score_method(det: Detector, name: str, samples: Sequence[Sample], row: AblationRow, timer: _Timer, on_error,
                  progress: Callable[[int], Any]) -> ClassEval:
    """A class through ``det.predict``, one image a call or a mutual method's groups as ``alfa-ad run``
    (engines/local.py: call_size); its wall time to ``row``."""
    ev, warnings, batch, mutual = ClassEval(), [], [], trait(det.method, "mutual")
    det.class_text(name), det.batch_size  # prompt embeddings (and an "auto" batch size) outside the timed calls
    size = call_size(det, len(samples)) if mutual else 1
    for i, s in enumerate(samples):
        im = _load(s, on_error)
        batch += [(s, im)] if im is not None else []
        if batch and (len(batch) == size or i == len(samples) - 1):
            if not mutual or len(batch) >= 2:
                results, seconds = timer(lambda: det.predict([b[1] for b in batch], name))
                row.seconds, row.images = row.seconds + seconds, row.images + len(batch)
                for (s_, im_), r in zip(batch, results):
                    truth = ground_truth_mask(s_, im_.size, warnings) if s_.label is not None else None
                    _collect(ev, s_, r.score, r.anomaly_map, truth)
            elif on_error:
                on_error(f"{batch[0][0].path}: not scored: {det.method.name} compares the images of a class with "
                         "each other and this one has no other readable image")
            batch = []
        progress(i + 1)
    return ev


__all__ = ["ALL_METHODS", "AblationConfig", "AblationRow", "GRID", "FULL", "METRICS", "MethodConfig", "applicable",
           "method_configs", "run_ablation"]
