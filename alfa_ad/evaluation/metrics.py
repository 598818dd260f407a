"""Detection metrics; ``None`` means *undefined* (e.g. only one class present).

Image level (one score per image):

* :func:`image_auroc` - area under the ROC curve (as ``sklearn.metrics.roc_auc_score``).
* :func:`image_aupr` - average precision (as ``sklearn.metrics.average_precision_score``).
* :func:`image_f1_max` - the largest F1 ``2PR / (P + R)`` over the points of
  ``sklearn.metrics.precision_recall_curve`` (0 where ``P + R == 0``).

Pixel level (every pixel of ``masks`` (bool, N x H x W) against ``maps`` (same shape)):

* :func:`pixel_auroc`, :func:`pixel_aupr`, :func:`pixel_f1_max` - the same three over all pixels.
* :func:`pro_auc` - normalised area under the per-region-overlap (PRO) curve up to a
  false-positive rate of 0.3, as in the MVTec AD evaluation.

:func:`summarize` computes all seven at once, sorting the pixel scores only once.

Conventions shared by every function:

* Labels / masks are binary: ``labels`` must hold 0/1 (or bools), masks are read as
  ``mask != 0``.  A score is *anomalous-high*: larger means more anomalous.
* A metric is ``None`` when it is undefined: no positive or no negative sample
  (``labels`` all one class, ``masks`` without a positive or without a negative pixel),
  empty input, and for PRO no anomalous region or no normal pixel.  Nothing is ever
  replaced by a silent 0.5.
* Constant (or tied) scores are *defined*: ties are handled exactly as scikit-learn does
  (one threshold per distinct score), so constant scores give AUROC 0.5, AUPR = the
  fraction of positives ``p``, F1-max ``2p / (1 + p)`` and PRO 0.15 (the chance line
  ``PRO = FPR`` integrated up to 0.3 and divided by 0.3).
* NaN scores raise ``ValueError`` (as scikit-learn does); +-inf are ordinary scores.
* Pixel maps that are ``float32`` or ``float64`` are used as they are (no copy of the
  whole array); any other dtype is converted to ``float64``.

All values are exact (no threshold grid): the pixel metrics are computed from one sort of
the normal-pixel scores and one of the anomalous-pixel scores, evaluated at every distinct
score with ``np.searchsorted``; they agree with scikit-learn to floating-point rounding.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

EVAL_SIZE = 256  # maps and masks are compared at 256 x 256

PRO_FPR_LIMIT = 0.3
#: Connectivity of the ground-truth regions for PRO: 8-connectivity, the 3x3 structuring
#: element of ones that the official MVTec AD evaluation code passes to ``scipy.ndimage.label``.
PRO_STRUCTURE = np.ones((3, 3), dtype=int)

# Distinct-score groups are evaluated this many sorted elements at a time (bounds the
# temporary memory of the vectorised steps; any value >= 1 gives the same results).
_CHUNK = 1 << 21


# --------------------------------------------------------------------------- core


def _as_scores(values) -> np.ndarray:
    """Flat float view/array of ``values`` (float32/float64 kept, others -> float64)."""
    arr = np.asarray(values)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return arr.reshape(-1)


def _check_sorted_finite(sorted_arr: np.ndarray, what: str) -> None:
    # NaN sorts to the end: checking the last element of each sorted array is enough.
    if sorted_arr.size and np.isnan(sorted_arr[-1]):
        raise ValueError(f"{what} contain NaN")


def _group_starts(arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Indices ``i`` in ``[lo, hi)`` where a run of equal values starts in sorted ``arr``."""
    seg = arr[lo:hi]
    if lo == 0:
        starts = np.empty(seg.size, dtype=bool)
        starts[0] = True
        np.not_equal(seg[1:], seg[:-1], out=starts[1:])
    else:
        starts = np.not_equal(seg, arr[lo - 1 : hi - 1])
    return np.flatnonzero(starts) + lo


def _distinct_values(arr: np.ndarray, lo: int = 0,
                     hi: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each distinct value ``v`` of sorted ``arr[lo:hi]`` exactly once, in ascending chunks.

    Yields ``(values, n_lt, n_le)``: ``n_lt = #(arr < v)`` and ``n_le = #(arr <= v)`` over the
    whole of ``arr`` (the run of ``v`` is ``arr[n_lt:n_le]``, even when it crosses a chunk
    boundary or starts before ``lo``; a run is reported in the chunk where it starts, the
    run containing ``lo`` in the first chunk).
    """
    hi = arr.size if hi is None else hi
    for s in range(lo, hi, _CHUNK):
        e = min(s + _CHUNK, hi)
        idx = _group_starts(arr, s, e)
        if s == lo and lo > 0 and (idx.size == 0 or idx[0] != lo):
            idx = np.concatenate(([lo], idx))  # the run containing ``lo`` started earlier
        if not idx.size:
            continue
        values = arr[idx]
        n_lt = idx.copy()
        n_lt[0] = np.searchsorted(arr, values[0], side="left")
        n_le = np.empty_like(idx)
        n_le[:-1] = idx[1:]
        n_le[-1] = np.searchsorted(arr, values[-1], side="right")
        yield values, n_lt, n_le


class _Split:
    """Scores split by class and sorted ascending: ``pos`` (label 1), ``neg`` (label 0)."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray, what: str = "scores", pos_sorted: bool = False):
        if not pos_sorted:
            pos.sort()
        neg.sort()
        _check_sorted_finite(pos, what)
        _check_sorted_finite(neg, what)
        self.pos, self.neg = pos, neg

    @property
    def defined(self) -> bool:
        return self.pos.size > 0 and self.neg.size > 0

    def ranking_metrics(self) -> tuple[float, float, float] | None:
        """``(auroc, aupr, f1_max)``, or ``None`` when one class is missing.

        With ``tp(v) = #pos >= v``, ``fp(v) = #neg >= v`` at the distinct score ``v``:

        * AUROC = P(pos > neg) + P(pos == neg) / 2 (the trapezoid under scikit-learn's ROC);
        * AUPR = sum over distinct positive scores ``v`` of ``(#pos == v) / n_pos * tp / (tp + fp)``
          (scikit-learn's ``-sum(diff(recall) * precision[:-1])``: recall only moves there);
        * F1-max = max ``2 tp / (tp + fp + n_pos)`` (= ``2PR/(P+R)``); for a fixed ``tp`` it
          is largest at the highest threshold, i.e. at a distinct positive score, and the
          remaining points of the PR curve have ``tp = 0`` (F1 0).
        """
        if not self.defined:
            return None
        pos, neg = self.pos, self.neg
        n_pos, n_neg = pos.size, neg.size
        u2 = 0  # 2 * Mann-Whitney U (integer, exact)
        ap = 0.0
        f1 = 0.0
        for v, p_lt, p_le in _distinct_values(pos):
            n_lt = np.searchsorted(neg, v, side="left")
            n_le = np.searchsorted(neg, v, side="right")
            count = p_le - p_lt
            u2 += int(np.dot(count, n_lt + n_le))
            tp = (n_pos - p_lt).astype(np.float64)
            fp = (n_neg - n_lt).astype(np.float64)
            ap += float(np.dot(count / n_pos, tp / (tp + fp)))
            f1 = max(f1, float(np.max(2.0 * tp / (tp + fp + n_pos))))
        auroc = u2 / 2.0 / (float(n_pos) * float(n_neg))
        return float(auroc), float(ap), float(f1)


def _image_split(labels, scores) -> _Split | None:
    y = np.asarray(labels)
    s = _as_scores(scores)
    y = y.reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.dtype != bool:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0/1 (or bool)")
        y = y.astype(bool)
    split = _Split(s[y].astype(np.float64), s[~y].astype(np.float64), "scores")
    return split if split.defined else None


def _check_pixel_shapes(masks: np.ndarray, maps: np.ndarray) -> None:
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")


def _as_masks(masks) -> np.ndarray:
    m = np.asarray(masks)
    return m if m.dtype == bool else m != 0


class _PixelData:
    """Pixel scores of a stack split by the masks, sorted once; PRO regions on demand."""

    def __init__(self, masks, maps, for_pro: bool = False):
        self.masks = _as_masks(masks)
        maps = np.asarray(maps)
        _check_pixel_shapes(self.masks, maps)
        self.maps = maps if maps.dtype in (np.float32, np.float64) else maps.astype(np.float64)
        self.split: _Split | None = None
        self._order: np.ndarray | None = None
        if self.masks.size == 0:
            return
        pos = self.maps[self.masks]  # C order: image by image, row by row
        if for_pro:  # PRO needs the permutation too: argsort once, instead of sort + argsort
            self._order = np.argsort(pos)
            pos = pos[self._order]
        self.split = _Split(pos, self.maps[~self.masks], "maps", pos_sorted=for_pro)

    def ranking_metrics(self) -> tuple[float, float, float] | None:
        return None if self.split is None else self.split.ranking_metrics()

    def pro(self, fpr_limit: float = PRO_FPR_LIMIT) -> float | None:
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if self.split is None or not self.split.defined:
            return None
        if self.masks.ndim not in (2, 3):
            raise ValueError(f"PRO needs masks of shape (H, W) or (N, H, W), got {self.masks.shape}")
        masks = self.masks if self.masks.ndim == 3 else self.masks[None]
        # order of the region pixels (C order) by score; the scores in that order are
        # ``split.pos`` (up to the order of ties, which is immaterial)
        order = self._order if self._order is not None else np.argsort(self.maps[self.masks])
        self._order = None
        region_ids, n_regions = _region_ids(masks)
        ids_sorted = region_ids[order]
        del order, region_ids
        return _pro_from_sorted(self.split.pos, ids_sorted, n_regions, self.split.neg, fpr_limit)


def _region_ids(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Region id (0-based, unique over the stack) of every True pixel, in C order.

    Regions are the connected components of each image's mask under 8-connectivity
    (:data:`PRO_STRUCTURE`, as the MVTec AD evaluation code); a region never spans images.
    """
    parts = []
    offset = 0
    for i in np.flatnonzero(masks.any(axis=(1, 2))):
        labelled, n = ndimage.label(masks[i], structure=PRO_STRUCTURE)
        ids = labelled[masks[i]].astype(np.int32, copy=False)
        ids += offset - 1
        parts.append(ids)
        offset += n
    if not parts:
        return np.empty(0, dtype=np.int32), 0
    return np.concatenate(parts), offset


def _pro_from_sorted(pos_sorted: np.ndarray, ids_sorted: np.ndarray, n_regions: int,
                     neg_sorted: np.ndarray, fpr_limit: float) -> float | None:
    """Exact normalised PRO area (see :func:`pro_auc`).

    ``pos_sorted``: region-pixel scores ascending; ``ids_sorted``: their region ids (0-based,
    same order); ``neg_sorted``: normal-pixel scores ascending.
    """
    if n_regions == 0 or neg_sorted.size == 0:
        return None
    n_neg = neg_sorted.size
    # weight of a region pixel: 1 / (R * region size), so that each region sums to 1 / R
    region_weight = 1.0 / (n_regions * np.bincount(ids_sorted, minlength=n_regions).astype(np.float64))
    ps = pos_sorted
    cum = np.empty(ps.size + 1, dtype=np.float64)
    cum[0] = 0.0
    np.take(region_weight, ids_sorted, out=cum[1:])
    np.cumsum(cum[1:], out=cum[1:])
    total = cum[-1]  # == 1 up to rounding

    # Curve points, one per distinct score t (descending): FPR(t) = #neg >= t / n_neg,
    # PRO(t) = sum of weights of region pixels >= t.  Segments ending at a score with no
    # normal pixel are vertical (no area), so the area is a sum over the distinct normal
    # scores u of the trapezoid from (FPR(>u), PRO(>u)) to (FPR(>=u), PRO(>=u)), where
    # "> u" is the previous curve point.  Only u with FPR(>u) < fpr_limit contribute; they
    # all lie in the top ceil(fpr_limit * n_neg) + 1 normal scores.
    n_top = min(n_neg, int(np.ceil(fpr_limit * n_neg)) + 1)
    area = 0.0
    for u, n_lt, n_le in _distinct_values(neg_sorted, n_neg - n_top):
        f_prev = (n_neg - n_le) / n_neg
        f_cur = (n_neg - n_lt) / n_neg
        p_prev = np.minimum(total - cum[np.searchsorted(ps, u, side="right")], 1.0)
        p_cur = np.minimum(total - cum[np.searchsorted(ps, u, side="left")], 1.0)
        area += pro_segments_area(f_prev, f_cur, p_prev, p_cur, fpr_limit)
    return float(area / fpr_limit)


def pro_segments_area(f_prev: np.ndarray, f_cur: np.ndarray, p_prev: np.ndarray, p_cur: np.ndarray,
                      fpr_limit: float) -> float:
    """Trapezoid area of PRO-curve segments ``(f_prev, p_prev) -> (f_cur, p_cur)`` left of
    ``fpr_limit``; the segment crossing it ends at the linearly interpolated point."""
    keep = f_prev < fpr_limit
    f_prev, f_cur, p_prev, p_cur = f_prev[keep], f_cur[keep].copy(), p_prev[keep], p_cur[keep].copy()
    over = f_cur > fpr_limit
    if over.any():
        frac = (fpr_limit - f_prev[over]) / (f_cur[over] - f_prev[over])
        p_cur[over] = p_prev[over] + (p_cur[over] - p_prev[over]) * frac
        f_cur[over] = fpr_limit
    return float(np.dot(f_cur - f_prev, (p_cur + p_prev) * 0.5))


# --------------------------------------------------------------------------- image level


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Image AUROC (= ``sklearn.metrics.roc_auc_score``); ``None`` if one class only.

    Constant scores give 0.5 (their true AUROC), not ``None``.
    """
    split = _image_split(labels, scores)
    return None if split is None else split.ranking_metrics()[0]


def image_aupr(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Image average precision (= ``sklearn.metrics.average_precision_score``).

    ``None`` if one class only; constant scores give the fraction of anomalous images.
    """
    split = _image_split(labels, scores)
    return None if split is None else split.ranking_metrics()[1]


def image_f1_max(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Largest F1 ``2PR/(P+R)`` over ``sklearn.metrics.precision_recall_curve`` (0 where P+R=0).

    ``None`` if one class only; constant scores give ``2p / (1 + p)`` with ``p`` the
    fraction of anomalous images (everything flagged).
    """
    split = _image_split(labels, scores)
    return None if split is None else split.ranking_metrics()[2]


# --------------------------------------------------------------------------- pixel level


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """AUROC over every pixel of ``masks`` (bool, N x H x W) against ``maps`` (same shape).

    ``None`` when the masks have no positive or no negative pixel (or are empty);
    constant maps give 0.5.
    """
    m = _PixelData(masks, maps).ranking_metrics()
    return None if m is None else m[0]


def pixel_aupr(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Average precision over every pixel (see :func:`pixel_auroc` for ``None``)."""
    m = _PixelData(masks, maps).ranking_metrics()
    return None if m is None else m[1]


def pixel_f1_max(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """F1-max over every pixel (see :func:`image_f1_max`, :func:`pixel_auroc`)."""
    m = _PixelData(masks, maps).ranking_metrics()
    return None if m is None else m[2]


def pro_auc(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT) -> float | None:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    As in the MVTec AD evaluation: the ground-truth regions are the connected components
    of each image's mask under 8-connectivity (``scipy.ndimage.label`` with a 3x3 structure
    of ones, :data:`PRO_STRUCTURE`).  For a threshold ``t`` (a pixel is flagged when its
    score is ``>= t``), PRO(t) is the mean over all regions of all images of the fraction
    of the region's pixels flagged, and FPR(t) the fraction of normal (mask 0) pixels
    flagged.  The curve has one point per distinct score (exact, no threshold grid),
    starts at (0, 0), ends at (1, 1), is cut at ``FPR = fpr_limit`` by linear
    interpolation and integrated with the trapezoid rule.

    ``masks``/``maps``: (N, H, W) or one (H, W) image.  ``None`` when there is no region or
    no normal pixel.  A perfect map gives 1.0; a constant map gives 0.15 for
    ``fpr_limit = 0.3`` (the chance line).
    """
    return _PixelData(masks, maps, for_pro=True).pro(fpr_limit)


def summarize(labels: Sequence[int] | None, scores: Sequence[float] | None,
              masks: np.ndarray | None, maps: np.ndarray | None) -> dict[str, float | None]:
    """All metrics: ``image_auroc, image_aupr, image_f1_max, pixel_auroc, pixel_aupr,
    pixel_f1_max, pro`` (PRO up to FPR 0.3).

    ``masks``/``maps`` may be ``None`` or empty: the pixel metrics are then ``None``; the
    same for ``labels``/``scores`` and the image metrics.  Pixel scores are sorted once
    for all four pixel metrics.
    """
    out: dict[str, float | None] = {}
    img = None
    if labels is not None and scores is not None:
        split = _image_split(labels, scores)
        img = None if split is None else split.ranking_metrics()
    out["image_auroc"], out["image_aupr"], out["image_f1_max"] = img if img else (None,) * 3
    pix = None
    pro = None
    if masks is not None and maps is not None and np.size(masks) and np.size(maps):
        data = _PixelData(masks, maps, for_pro=True)
        pix = data.ranking_metrics()
        pro = data.pro(PRO_FPR_LIMIT)
    out["pixel_auroc"], out["pixel_aupr"], out["pixel_f1_max"] = pix if pix else (None,) * 3
    out["pro"] = pro
    return out
