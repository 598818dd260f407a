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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .aligners import build_aligner
from .detector import Detector
from .evaluation.resize import resize_for_evaluation
from .io.datasets import Sample, ground_truth_mask
from .io.images import ImageLoadError, load_image
from .methods.alfa import DEFAULT_SCALES
from .methods.alfa_head import AlfaHead
from .outputs.tables import METRICS, mean_over
from .runner import ClassEval
from .scoring.placement import DEFAULT_PLACEMENT
from .scoring.refine import RegionRefiner
from .scoring.windows import harmonic_mean
from .scoring.zero_shot import image_score

TEMPLATES, LLM, LEARNED = "template", "llm", "learned"


@dataclass(frozen=True)
class AblationConfig:
    """One row of the grid."""

    name: str
    sources: tuple[str, ...] = (TEMPLATES, LLM)
    contextual: str = DEFAULT_PLACEMENT  # where eq. (4) applies (scoring/placement.py)
    aligner: str = "masked"
    scales: tuple[int, ...] = DEFAULT_SCALES
    text_projection: str = "none"
    global_in_map: bool = True  # the image-level score as one more term of the map's harmonic mean
    refine: bool = False  # anomaly region refinement with the default blocks (scoring/refine.py)

    def describe(self) -> dict[str, str]:
        return {"configuration": self.name, "prompt sources": " + ".join(self.sources),
                "S_c": self.contextual, "aligner": self.aligner, "global in map": "yes" if self.global_in_map else "no",
                "scales": ",".join(map(str, self.scales)), "text projection": self.text_projection,
                "refine": "yes" if self.refine else "no"}


FULL = AblationConfig("alfa-ad default", (TEMPLATES,))
PAPER = AblationConfig("paper preset (S_c everywhere, scales 2,3, rank-1, no image score in the map; "
                       "the run's sigma)",
                       (TEMPLATES, LLM), "all", "masked", (2, 3), "rank1", False)

# The grid: Table 2 (prompt sources x contextual scoring x aligner on/off, S_c as the paper
# places it: "all"), the default and one change at a time from it (eq. 4 placement, LLM
# prompts, aligners, scales, text projection, the image score in the map), the paper
# preset, and learned prompts when a class has them.
GRID: tuple[AblationConfig, ...] = (
    AblationConfig("templates", (TEMPLATES,), "off", "none"),
    AblationConfig("templates + S_c", (TEMPLATES,), "all", "none"),
    AblationConfig("templates + LLM", (TEMPLATES, LLM), "off", "none"),
    AblationConfig("templates + LLM + S_c", (TEMPLATES, LLM), "all", "none"),
    AblationConfig("templates + aligner", (TEMPLATES,), "off", "masked", (2, 3), global_in_map=False),
    AblationConfig("templates + S_c + aligner", (TEMPLATES,), "all", "masked", (2, 3), global_in_map=False),
    AblationConfig("templates + LLM + aligner", (TEMPLATES, LLM), "off", "masked", (2, 3), global_in_map=False),
    AblationConfig("templates + LLM + S_c + aligner", (TEMPLATES, LLM), "all", "masked", (2, 3),
                   global_in_map=False),
    FULL,
    AblationConfig("default, S_c global", (TEMPLATES,), "global"),
    AblationConfig("default, S_c soft", (TEMPLATES,), "soft"),
    AblationConfig("default, S_c all", (TEMPLATES,), "all"),
    AblationConfig("default + LLM prompts", (TEMPLATES, LLM)),
    AblationConfig("default, value aligner", (TEMPLATES,), aligner="value"),
    AblationConfig("default, dense aligner", (TEMPLATES,), aligner="dense"),
    AblationConfig("default, scales 2,3", (TEMPLATES,), scales=(2, 3)),
    AblationConfig("default, scales 2", (TEMPLATES,), scales=(2,)),
    AblationConfig("default, rank-1 text projection", (TEMPLATES,), text_projection="rank1"),
    AblationConfig("default, image score not in the map", (TEMPLATES,), global_in_map=False),
    PAPER,
    AblationConfig("default + learned prompts", (TEMPLATES, LEARNED)),
    AblationConfig("default + refinement", (TEMPLATES,), refine=True),
)


def applicable(grid: Sequence[AblationConfig], available: set[str]) -> list[AblationConfig]:
    """The grid with each configuration's prompt sources cut to those the data has; a
    configuration that then repeats an earlier one (or has no source left) is dropped."""
    out, seen = [], set()
    for cfg in grid:
        sources = tuple(s for s in cfg.sources if s in available)
        key = (sources, cfg.contextual, cfg.aligner, cfg.scales, cfg.text_projection, cfg.global_in_map, cfg.refine)
        if sources and key not in seen:
            seen.add(key)
            out.append(replace(cfg, sources=sources))
    return out


@dataclass
class AblationRow:
    config: AblationConfig
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
                 on_error: Callable[[str], None] | None = None) -> list[AblationRow]:
    """Score ``dataset`` under every applicable configuration of ``grid`` (ALFA, zero-shot)."""
    if detector.method.name != "alfa":
        raise ValueError("the ablation grid is ALFA's; build the detector with method 'alfa'")
    class_names = class_names or {}
    bb = detector.backbone
    available = set()
    for cls in dataset:
        available |= {s for s, n in detector.prompts(class_names.get(cls, cls)).sources.items() if n}
    configs = applicable(grid, available)
    if not configs:
        raise ValueError(f"no configuration of the grid applies (prompt sources here: {', '.join(sorted(available))})")
    base = detector.method.head
    scales = sorted({s for c in configs for s in c.scales})
    heads = {name: AlfaHead(build_aligner(name, bb), bb.grid, bb.image_size, scales, base.temperature, base.k,
                            base.blur.sigma).to(bb.device)
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
            try:
                im = load_image(s.path)
            except ImageLoadError as exc:
                if on_error:
                    on_error(str(exc))
                continue
            truth = ground_truth_mask(s, im.size, warnings) if s.label is not None else None
            with torch.inference_mode():
                pixels = bb.preprocess([im])
                feats, t_fwd = timer(lambda: base.encode(pixels))
                locals_, t_local = {}, {}
                for al, head in heads.items():
                    state, t_prep = timer(lambda: head.aligner.prepare(feats))
                    t_local[al] = {"prepare": t_prep}
                    for s_, (windows, _) in zip(scales, head.geometry()):
                        locals_[al, s_], t_local[al][s_] = timer(lambda: head.aligner(feats, state, windows))
                affinities, t_refine = timer(lambda: refiner.affinities(pixels)) if refiner else (None, 0.0)
                for row, ev, c in zip(rows, evals, configs):
                    if text[c.sources] is None:
                        continue
                    head = heads[c.aligner]
                    (score, amap), t_score = timer(lambda: _score(head, feats, locals_, c, text[c.sources], scales))
                    if c.refine:
                        amap, t_apply = timer(lambda: refiner.apply(amap[None], affinities).maps[0])
                        t_score += t_apply + t_refine
                    row.seconds += t_fwd + t_local[c.aligner]["prepare"] + sum(t_local[c.aligner][x] for x in c.scales)
                    row.seconds += t_score
                    row.images += 1
                    _collect(ev, s, score, amap, im.size, truth)
            if on_progress:
                on_progress(cls, i + 1, len(samples))
        for row, ev in zip(rows, evals):
            if ev.labels:
                row.metrics[cls] = ev.metrics()
    return rows


def _score(head: AlfaHead, feats, locals_, c: AblationConfig, text, scales) -> tuple[float, torch.Tensor]:
    ad = head.adapt(feats.g, *text, contextual=c.contextual)
    geometry = dict(zip(scales, head.geometry()))
    maps = [head.window_map(feats.g, locals_[c.aligner, s], ad.local_classes, geometry[s][1], c.text_projection)
            for s in c.scales]
    if c.global_in_map:
        maps.append(ad.global_scores.view(-1, 1, 1).expand_as(maps[0]))
    patch_map = harmonic_mean(torch.stack(maps), dim=0)
    return float(image_score(ad.global_scores, patch_map)[0]), head.finish(patch_map)[0]


def _collect(ev: ClassEval, s: Sample, score: float, amap: torch.Tensor, size: tuple[int, int], truth) -> None:
    if s.label is None:
        return
    ev.labels.append(s.label)
    ev.scores.append(score)
    if truth is not None:
        full = torch.nn.functional.interpolate(amap[None, None].float().cpu(), size=(size[1], size[0]),
                                               mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        ev.pixels.add(resize_for_evaluation(truth.astype(np.float32)) >= 0.5, resize_for_evaluation(full.numpy().astype(np.float32)))


__all__ = ["AblationConfig", "AblationRow", "GRID", "FULL", "METRICS", "applicable", "run_ablation"]
