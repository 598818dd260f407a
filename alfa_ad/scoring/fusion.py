"""Fusion of the zero-shot (language) and few-shot (visual) parts: ``raw`` (alfa-ad 0.1:
the plain mean of quantities of different ranges) or ``normalized`` (each part on the
scale of its own spread over the normal references, leave-one-out; docs/method.md 7).

Parts of one unit (image or tile): language map ``L (P,)`` and class-token score ``G``
(zero-shot, None without text), visual map ``V (P,)`` and image residual ``R``
(few-shot; ``R`` only for scorers with an image-level residual).  Every part lies in [0, 1].

* raw:        ``M = mean(L, V)``, ``S = mean(G, max_p M, R)`` (over the parts present);
  WinCLIP+ keeps anomalib's ``S = mean(G, max_p V)``.
* normalized: ``M = sum_X w_X X / sum_X w_X`` over the map parts and
  ``S = sum_Y w_Y Y / sum_Y w_Y`` over ``G``, ``peak = max_p M`` and ``R``, with
  ``w_X = 1 / sigma_X``, ``sigma_X`` the standard deviation of ``X`` over the references
  (leave-one-out for ``V``, ``R`` and ``peak``; all patches for maps).  This is the mean of
  the z-scores ``(X - mu_X) / sigma_X`` up to a positive affine map (the same order, so
  the same metrics and thresholds' decisions), and stays a convex combination of [0, 1]
  parts: maps stay in [0, 1] and linear in the parts (smoothing commutes with it).
  With neither ``L`` nor ``R`` there is nothing to fuse: ``M = V``, ``S = max V``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

FUSIONS = ("normalized", "raw")
SIGMA_FLOOR = 1e-6


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float

    @classmethod
    def of(cls, values: torch.Tensor) -> "Stat":
        v = values.double().flatten()
        return cls(float(v.mean()), max(float(v.std(unbiased=False)), SIGMA_FLOOR))

    def z(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class FusionStats:
    """Reference statistics of each part (None: the part is absent)."""

    visual: Stat
    language: Optional[Stat] = None
    global_: Optional[Stat] = None
    image: Optional[Stat] = None
    peak: Optional[Stat] = None

    def as_dict(self) -> dict:
        return {k: None if v is None else {"mean": v.mean, "std": v.std} for k, v in vars(self).items()}


def _weighted(parts: Sequence[tuple[Optional[torch.Tensor], Optional[Stat]]]) -> torch.Tensor:
    present = [(x, 1.0 / st.std) for x, st in parts if x is not None]
    total = sum(w for _, w in present)
    return sum(x * (w / total) for x, w in present)


def _mean(parts: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    present = [p for p in parts if p is not None]
    return torch.stack(present).mean(0)


def fuse(language: Optional[torch.Tensor], global_: Optional[torch.Tensor], visual: torch.Tensor,
         image: Optional[torch.Tensor], stats: Optional[FusionStats], peak_of_visual: bool = False):
    """``(patch map (B, P), image score (B,), normalized)``.  ``stats`` None: raw."""
    if stats is None or (language is None and image is None):  # nothing to fuse: V and max V as they are
        patch = _mean([language, visual])
        peak = (visual if peak_of_visual else patch).flatten(1).amax(-1)
        return patch, _mean([global_, peak, image]), False
    patch = _weighted([(language, stats.language), (visual, stats.visual)])
    peak = (visual if peak_of_visual else patch).flatten(1).amax(-1)
    peak_stat = stats.peak if stats.peak is not None else (stats.visual if peak_of_visual else Stat(0.0, 1.0))
    score = _weighted([(global_, stats.global_), (peak, peak_stat), (image, stats.image)])
    return patch, score, True


def reference_stats(visual: torch.Tensor, image: Optional[torch.Tensor], language: Optional[torch.Tensor],
                    global_: Optional[torch.Tensor], subset: Sequence[int], peak_of_visual: bool = False) -> FusionStats:
    """Statistics from the references: ``visual (U, P)`` and ``image (U,)`` leave-one-out
    results of every unit; ``language (S, P)`` and ``global_ (S,)`` zero-shot parts of the
    units ``subset`` (the ones scored zero-shot)."""
    base = FusionStats(Stat.of(visual), None if language is None else Stat.of(language),
                       None if global_ is None else Stat.of(global_), None if image is None else Stat.of(image))
    v = visual[list(subset)]
    patch = v if language is None else _weighted([(language, base.language), (v, base.visual)])
    peak = (v if peak_of_visual else patch).flatten(1).amax(-1)
    return FusionStats(base.visual, base.language, base.global_, base.image, Stat.of(peak))
