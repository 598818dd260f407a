"""Pixel metrics in constant memory: histograms over a fine grid of map values.

A batch run over 100,000 images cannot keep every map.  Anomaly maps lie in
[0, 1]; each map (at EVAL_SIZE) is rounded to the nearest multiple of
``1 / (2**20 - 1)`` and its pixels are counted per value: normal pixels, anomalous
pixels, and anomalous pixels weighted by ``1 / size of their region`` (for PRO).
Three arrays of 2**20 counters (24 MB) hold everything the pixel metrics need,
whatever the number of images.

**Exactness.** The metrics computed here equal, to floating-point rounding, the
exact metrics of :mod:`alfa_ad.evaluation.metrics` applied to the maps rounded to
that grid (tested to 1e-9).  Against the unrounded float32 maps they differ only
through ties that rounding (a step of about 1e-6) creates; the tests bound that
difference by 1e-3 on maps far more clustered than real ones.  Values outside
[0, 1] are clipped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .metrics import PRO_FPR_LIMIT, PRO_STRUCTURE, pro_segments_area

N_BINS = 1 << 20


def value_keys(values: np.ndarray) -> np.ndarray:
    """Bin of each value: ``round(clip(v, 0, 1) * (N_BINS - 1))`` (order-preserving)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.rint(v * (N_BINS - 1)).astype(np.int64)


def rounded(values: np.ndarray) -> np.ndarray:
    """The values the histograms see (for tests and documentation)."""
    return value_keys(values) / (N_BINS - 1)


class StreamingPixelMetrics:
    """Accumulates (mask, map) pairs; :meth:`metrics` gives pixel AUROC, AUPR, F1-max and PRO."""

    def __init__(self) -> None:
        self.pos = np.zeros(N_BINS, dtype=np.int64)
        self.neg = np.zeros(N_BINS, dtype=np.int64)
        self.region_weight = np.zeros(N_BINS, dtype=np.float64)  # sum of 1/|region| per bin
        self.n_regions = 0

    def add(self, mask: np.ndarray, amap: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        amap = np.asarray(amap)
        if mask.shape != amap.shape:
            raise ValueError(f"mask {mask.shape} and map {amap.shape} differ in shape")
        if np.isnan(amap).any():
            raise ValueError("maps contain NaN")
        keys = value_keys(amap)
        self.neg += np.bincount(keys[~mask], minlength=N_BINS)
        if mask.any():
            pos_keys = keys[mask]
            self.pos += np.bincount(pos_keys, minlength=N_BINS)
            labels, n = ndimage.label(mask, structure=PRO_STRUCTURE)
            sizes = np.bincount(labels[mask])  # index 0 unused (background)
            weights = 1.0 / sizes[labels[mask]]
            self.region_weight += np.bincount(pos_keys, weights=weights, minlength=N_BINS)
            self.n_regions += n

    def merge(self, other: "StreamingPixelMetrics") -> None:
        self.pos += other.pos
        self.neg += other.neg
        self.region_weight += other.region_weight
        self.n_regions += other.n_regions

    def state(self) -> dict[str, np.ndarray]:
        return {"pos": self.pos, "neg": self.neg, "region_weight": self.region_weight,
                "n_regions": np.array([self.n_regions])}

    @classmethod
    def from_state(cls, state) -> "StreamingPixelMetrics":
        out = cls()
        out.pos, out.neg = np.array(state["pos"]), np.array(state["neg"])
        out.region_weight, out.n_regions = np.array(state["region_weight"]), int(state["n_regions"][0])
        return out

    @property
    def empty(self) -> bool:
        return not (self.pos.any() or self.neg.any())

    def metrics(self, fpr_limit: float = PRO_FPR_LIMIT) -> dict[str, float | None]:
        out: dict[str, float | None] = {"pixel_auroc": None, "pixel_aupr": None, "pixel_f1_max": None, "pro": None}
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return out
        pos, neg = self.pos.astype(np.float64), self.neg.astype(np.float64)
        # counts at or above each bin (the threshold "score >= value of bin")
        tp_ge = np.cumsum(pos[::-1])[::-1]
        fp_ge = np.cumsum(neg[::-1])[::-1]
        neg_lt = n_neg - fp_ge
        neg_le = neg_lt + neg
        at = pos > 0
        out["pixel_auroc"] = float(np.dot(pos[at], neg_lt[at] + neg_le[at]) / 2.0 / (n_pos * float(n_neg)))
        prec = tp_ge[at] / (tp_ge[at] + fp_ge[at])
        out["pixel_aupr"] = float(np.dot(pos[at] / n_pos, prec))
        out["pixel_f1_max"] = float(np.max(2.0 * tp_ge[at] / (tp_ge[at] + fp_ge[at] + n_pos)))
        if self.n_regions:
            out["pro"] = self._pro(fp_ge, neg, n_neg, fpr_limit)
        return out

    def _pro(self, fp_ge: np.ndarray, neg: np.ndarray, n_neg: int, fpr_limit: float) -> float:
        """Trapezoids between consecutive curve points at the distinct normal scores, as in
        :func:`alfa_ad.evaluation.metrics._pro_from_sorted`."""
        pro_ge = np.minimum(np.cumsum(self.region_weight[::-1])[::-1] / self.n_regions, 1.0)
        pro_gt = np.append(pro_ge[1:], 0.0)
        u = np.flatnonzero(neg > 0)
        f_cur = fp_ge[u] / n_neg
        f_prev = (fp_ge[u] - neg[u]) / n_neg
        return pro_segments_area(f_prev, f_cur, pro_gt[u], pro_ge[u], fpr_limit) / fpr_limit
