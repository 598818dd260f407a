"""Fusion of the zero-shot (language) and few-shot (visual) parts: ``raw`` (alfa-ad 0.1:
the plain mean of quantities of different ranges) or ``normalized`` (each part on the
scale of its own spread over the normal references, leave-one-out; docs/method.md 7).

Parts of one unit (image or tile): language map ``L (P,)`` and class-token score ``G``
(zero-shot, None without text), visual map ``V (P,)`` and image residual ``R``
(few-shot; ``R`` only for scorers with an image-level residual).

* raw:        ``M = mean(L, V)``, ``S = mean(G, max_p M, R)`` (over the parts present);
  WinCLIP+ keeps anomalib's ``S = mean(G, max_p V)``.
* normalized: ``z_X = (X - mu_X) / sigma_X`` with ``mu, sigma`` the mean and standard
  deviation of ``X`` over the references (leave-one-out for ``V``, ``R``; all patches
  for maps), ``Z = mean(z_L, z_V)``, ``M = squash(Z)`` (after upsampling and smoothing),
  ``S = squash(mean(z_G, z_peak, z_R))`` with ``peak = max_p Z`` normalized by its own
  reference statistics.  ``squash(z) = (1 + z / (1 + |z|)) / 2`` maps the real line onto
  (0, 1) monotonically without saturating (maps and thresholds stay in [0, 1]).
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


def squash(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + z / (1.0 + z.abs()))


def _mean(parts: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    present = [p for p in parts if p is not None]
    return torch.stack(present).mean(0)


def fuse(language: Optional[torch.Tensor], global_: Optional[torch.Tensor], visual: torch.Tensor,
         image: Optional[torch.Tensor], stats: Optional[FusionStats], peak_of_visual: bool = False):
    """``(patch map (B, P), image score (B,), normalized)``.  The map is ``Z`` (to be squashed
    after upsampling and smoothing) when ``normalized``, else ``M``.  ``stats`` None: raw."""
    if stats is None:
        patch = _mean([language, visual])
        peak = (visual if peak_of_visual else patch).flatten(1).amax(-1)
        return patch, _mean([global_, peak, image]), False
    z = _mean([None if language is None else stats.language.z(language), stats.visual.z(visual)])
    peak = (stats.visual.z(visual) if peak_of_visual else z).flatten(1).amax(-1)
    parts = [None if global_ is None else stats.global_.z(global_),
             peak if stats.peak is None else stats.peak.z(peak),
             None if image is None else stats.image.z(image)]
    return z, squash(_mean(parts)), True


def reference_stats(visual: torch.Tensor, image: Optional[torch.Tensor], language: Optional[torch.Tensor],
                    global_: Optional[torch.Tensor], subset: Sequence[int], peak_of_visual: bool = False) -> FusionStats:
    """Statistics from the references: ``visual (U, P)`` and ``image (U,)`` leave-one-out
    results of every unit; ``language (S, P)`` and ``global_ (S,)`` zero-shot parts of the
    units ``subset`` (the ones scored zero-shot)."""
    base = FusionStats(Stat.of(visual), None if language is None else Stat.of(language),
                       None if global_ is None else Stat.of(global_), None if image is None else Stat.of(image))
    z, _, _ = fuse(language, global_, visual[list(subset)], None if image is None else image[list(subset)], base,
                   peak_of_visual)
    peak = (base.visual.z(visual[list(subset)]) if peak_of_visual else z).flatten(1).amax(-1)
    return FusionStats(base.visual, base.language, base.global_, base.image, Stat.of(peak))
