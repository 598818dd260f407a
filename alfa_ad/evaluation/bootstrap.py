"""Paired bootstrap intervals for differences of image AUROC, pixel AUROC and PRO.

Two configurations scored on the **same images** are compared by resampling images:
every bootstrap replicate draws, within each group (a class of one benchmark), the
normal and the anomalous images with replacement (stratified, so every replicate has
both labels), computes each configuration's metrics on that multiset of images, and
takes their difference; the 2.5 and 97.5 percentiles of the differences give the 95%
interval.  Both configurations see the same draws (paired), so what the images have in
common cancels and only the configurations' difference is left.  The reported value is
the mean over groups, as the tables' "mean over classes".

Resampling whole images keeps the dependence between an image's pixels.  To make a
replicate cheap, each image's map is reduced once to histograms over a group's value
bins (quantiles of the pooled map values of that configuration, ``n_bins`` of them):
normal-pixel counts, anomalous-pixel counts and anomalous pixels weighted by
``1 / size of their region`` (for PRO).  A replicate's histograms are the
count-weighted sums of its images' histograms, from which pixel AUROC and PRO follow
as in :mod:`alfa_ad.evaluation.streaming` (ties within a bin count one half).  With
unit weights these equal the exact metrics of the binned maps; against the unbinned
maps the difference is bounded by the pixels that share a bin (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .metrics import PRO_FPR_LIMIT, PRO_STRUCTURE

METRIC_NAMES = ("image_auroc", "pixel_auroc", "pro")


@dataclass
class GroupStats:
    """One group's images under one configuration, reduced for the bootstrap.

    ``keys`` name the images (paths) so that two configurations are paired image by
    image; ``pixel`` is False when no image of the group has a mask.
    """

    keys: tuple[str, ...]
    labels: np.ndarray  # (n,) 0/1
    scores: np.ndarray  # (n,)
    pos: np.ndarray  # (n, B) anomalous pixels per bin
    neg: np.ndarray  # (n, B) normal pixels per bin
    region_weight: np.ndarray  # (n, B) sum of 1/|region| of anomalous pixels per bin
    regions: np.ndarray  # (n,) regions per image
    has_mask: np.ndarray  # (n,) bool

    @classmethod
    def build(cls, keys: Sequence[str], labels: Sequence[int], scores: Sequence[float],
              masks: Sequence[np.ndarray | None], maps: Sequence[np.ndarray | None], n_bins: int = 1024
              ) -> "GroupStats":
        """``masks``/``maps``: per image 2-D arrays of one shape (None: image metrics only)."""
        n = len(keys)
        with_pixels = [i for i in range(n) if masks[i] is not None and maps[i] is not None]
        if with_pixels:
            pooled = np.concatenate([np.asarray(maps[i], dtype=np.float64).ravel() for i in with_pixels])
            edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1)[1:-1]))
        else:
            edges = np.zeros(0)
        width = len(edges) + 1
        pos, neg, rw = (np.zeros((n, width)) for _ in range(3))
        regions = np.zeros(n)
        for i in with_pixels:
            mask = np.asarray(masks[i], dtype=bool)
            amap = np.asarray(maps[i], dtype=np.float64)
            if mask.shape != amap.shape:
                raise ValueError(f"{keys[i]}: mask {mask.shape} and map {amap.shape} differ in shape")
            bins = np.searchsorted(edges, amap, side="right")
            neg[i] = np.bincount(bins[~mask], minlength=width)
            if mask.any():
                pos[i] = np.bincount(bins[mask], minlength=width)
                labelled, count = ndimage.label(mask, structure=PRO_STRUCTURE)
                sizes = np.bincount(labelled[mask])
                rw[i] = np.bincount(bins[mask], weights=1.0 / sizes[labelled[mask]], minlength=width)
                regions[i] = count
        has = np.zeros(n, dtype=bool)
        has[with_pixels] = True
        return cls(tuple(keys), np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64),
                   pos, neg, rw, regions, has)

    @property
    def pixel(self) -> bool:
        return bool(self.pos.sum() > 0 and self.neg.sum() > 0)

    def align(self, keys: Sequence[str]) -> "GroupStats":
        """The same images in the order of ``keys`` (a one-line error naming a missing image)."""
        where = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in where]
        if missing:
            raise ValueError(f"image {missing[0]!r} was not scored by both configurations")
        idx = np.array([where[k] for k in keys], dtype=np.int64)
        return GroupStats(tuple(keys), self.labels[idx], self.scores[idx], self.pos[idx], self.neg[idx],
                          self.region_weight[idx], self.regions[idx], self.has_mask[idx])

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric for each row of ``weights`` ``(R, n)`` (image multiplicities)."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        out = {"image_auroc": weighted_auroc(self.labels, self.scores, w)}
        if self.pixel:
            auroc, pro = _pixel_metrics(w @ self.pos, w @ self.neg, w @ self.region_weight, w @ self.regions)
            out["pixel_auroc"], out["pro"] = auroc, pro
        return out


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of every weighting ``(R, n)`` of the images (ties count one half)."""
    p, q = labels == 1, labels == 0
    if not p.any() or not q.any():
        return np.full(weights.shape[0], np.nan)
    sp, sq = scores[p], scores[q]
    wins = (sp[:, None] > sq[None, :]) + 0.5 * (sp[:, None] == sq[None, :])  # (n_pos, n_neg)
    wp, wq = weights[:, p], weights[:, q]
    return np.einsum("rp,pq,rq->r", wp, wins, wq) / (wp.sum(1) * wq.sum(1))


def _pixel_metrics(pos: np.ndarray, neg: np.ndarray, region_weight: np.ndarray, regions: np.ndarray,
                   fpr_limit: float = PRO_FPR_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """Pixel AUROC and PRO of summed histograms ``(R, B)`` (bins in increasing value)."""
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    fp_ge = np.cumsum(neg[:, ::-1], 1)[:, ::-1]  # normal pixels at or above each bin
    neg_lt = n_neg[:, None] - fp_ge
    auroc = (pos * (neg_lt + 0.5 * neg)).sum(1) / (n_pos * n_neg)
    pro_ge = np.minimum(np.cumsum(region_weight[:, ::-1], 1)[:, ::-1] / np.maximum(regions, 1)[:, None], 1.0)
    pro_gt = np.concatenate([pro_ge[:, 1:], np.zeros((pro_ge.shape[0], 1))], 1)
    f_cur = fp_ge / n_neg[:, None]
    f_prev = (fp_ge - neg) / n_neg[:, None]
    # segments (f_prev, pro_gt) -> (f_cur, pro_ge), clipped at the FPR limit (zero-width ones add nothing)
    end = np.minimum(f_cur, fpr_limit)
    frac = np.where(f_cur > f_prev, (end - f_prev) / np.where(f_cur > f_prev, f_cur - f_prev, 1.0), 0.0)
    p_end = pro_gt + (pro_ge - pro_gt) * frac
    area = np.where(f_prev < fpr_limit, (end - f_prev) * (p_end + pro_gt) * 0.5, 0.0).sum(1)
    pro = np.where(regions > 0, area / fpr_limit, np.nan)
    return auroc, pro


def stratified_weights(labels: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``(R, n)`` image multiplicities: each label's images drawn with replacement, as many as it has."""
    w = np.zeros((replicates, len(labels)))
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=replicates)
    return w


@dataclass
class Difference:
    """``a - b`` of one metric: the difference on all images and its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def above_zero(self) -> bool:
        return self.low > 0

    def format(self, scale: float = 100.0) -> str:
        return f"{scale * self.value:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"


def paired_differences(a: Mapping[str, GroupStats], b: Mapping[str, GroupStats], replicates: int = 1000,
                       seed: int = 0, metrics: Sequence[str] = METRIC_NAMES) -> dict[str, Difference]:
    """Mean-over-groups differences ``a - b`` with 95% paired bootstrap intervals.

    ``a`` and ``b`` map group names to the same images' stats; a group's replicate
    draws are seeded by ``seed`` and the group's position, so every comparison with
    the same groups uses the same draws.  A metric missing in a group (no mask) is
    averaged over the groups that have it.
    """
    if set(a) != set(b):
        raise ValueError(f"the configurations cover different groups: {sorted(set(a) ^ set(b))}")
    full = {m: [] for m in metrics}
    boot = {m: [] for m in metrics}
    for gi, name in enumerate(sorted(a)):
        ga, gb = a[name], b[name].align(a[name].keys)
        rng = np.random.default_rng([seed, gi])
        w = stratified_weights(ga.labels, replicates, rng)
        ones = np.ones((1, len(ga.keys)))
        ma, mb, fa, fb = ga.metrics(w), gb.metrics(w), ga.metrics(ones), gb.metrics(ones)
        for m in metrics:
            if m in ma and m in mb:
                full[m].append(fa[m][0] - fb[m][0])
                boot[m].append(ma[m] - mb[m])
    out = {}
    for m in metrics:
        if not full[m]:
            continue
        reps = np.nanmean(np.stack(boot[m]), 0)
        low, high = np.nanpercentile(reps, [2.5, 97.5])
        out[m] = Difference(float(np.nanmean(full[m])), float(low), float(high))
    return out


def group_metrics(groups: Mapping[str, GroupStats]) -> dict[str, float]:
    """Mean over groups of each metric on all images (binned pixel metrics)."""
    values: dict[str, list[float]] = {}
    for g in groups.values():
        for m, v in g.metrics(np.ones((1, len(g.keys)))).items():
            if np.isfinite(v[0]):
                values.setdefault(m, []).append(float(v[0]))
    return {m: float(np.mean(v)) for m, v in values.items()}
