"""One colour scale per class, and the pixel-score histograms it (and the report's curves) come from.

Rule (also printed on every overlay and in the report):

* **calibrated** (a pixel threshold ``t`` is known): the threshold sits in the middle of the
  bar, ``vmin`` is the class's :data:`LOW_QUANTILE` pixel value (kept below ``t``) and
  ``vmax = 2 t - vmin``; everything warmer than green is above the threshold.
* **otherwise**: ``vmin`` / ``vmax`` are the :data:`LOW_QUANTILE` / :data:`HIGH_QUANTILE`
  quantiles of all map values of the class's test images (every pixel of every image,
  normal and defective alike, at the 256 x 256 evaluation size).
* ``image``: each image's own ``min``..``max`` (the old behaviour, ``--overlay-scale image``),
  for inspecting one map; colours of two images are then not comparable.

:class:`PixelStats` holds fixed-bin histograms of the map values over ``[0, 1]`` (maps are
documented to lie there; values outside are clipped into the end bins), so memory does not
grow with the number of images. From them come the quantiles above, and the pixel ROC and
PRO curves of the report (to the bin width :data:`BIN_WIDTH`; the metric values printed in
the report are the exact ones of ``metrics.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.metrics import EVAL_SIZE
from ..evaluation.streaming import N_BINS, StreamingPixelMetrics, value_keys

LOW_QUANTILE = 0.01
HIGH_QUANTILE = 0.999
BIN_WIDTH = 1.0 / (N_BINS - 1)  # bins of alfa_ad.evaluation.streaming: value = bin * BIN_WIDTH
SCALE_MODES = ("class", "image")


@dataclass
class ColourScale:
    """The ``vmin``..``vmax`` of a class's overlays, the threshold drawn and how they were chosen."""

    vmin: float
    vmax: float
    rule: str  # "threshold", "quantiles", "image" or "empty"
    threshold: float | None = None

    def describe(self, class_name: str) -> str:
        if self.rule == "threshold":
            return (f"colour scale fixed for class {class_name}: pixel threshold {self.threshold:.4g} at mid-bar, "
                    f"{self.vmin:.4g}-{self.vmax:.4g}")
        if self.rule == "quantiles":
            return (f"colour scale fixed for class {class_name}: {self.vmin:.4g}-{self.vmax:.4g} "
                    f"({100 * LOW_QUANTILE:g}%-{100 * HIGH_QUANTILE:g}% quantiles of its map values)")
        if self.rule == "image":
            return "colours span this image's own map range (not comparable across images)"
        return "no map values"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_resize(values: np.ndarray) -> np.ndarray:
    """Bilinear resize of an HxW array to the metrics' EVAL_SIZE x EVAL_SIZE (as the runner does)."""
    import torch  # here: the CLI imports this module and must start without torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()


class PixelStats(StreamingPixelMetrics):
    """One class's map values: the metric histograms of
    :class:`~alfa_ad.evaluation.streaming.StreamingPixelMetrics` (normal pixels, defect
    pixels, PRO region mass) for images with ground truth, plus a histogram of *all*
    pixels (unlabelled images too) for the colour scale; same bins, so one code path."""

    def __init__(self) -> None:
        super().__init__()
        self.all = np.zeros(N_BINS, dtype=np.int64)
        self.n_images = 0

    @property
    def normal(self) -> np.ndarray:
        return self.neg

    @property
    def defect(self) -> np.ndarray:
        return self.pos

    @property
    def regions(self) -> np.ndarray:
        return self.region_weight

    def add(self, anomaly_map: np.ndarray, mask: np.ndarray | None) -> None:  # type: ignore[override]
        """One image at any size (resized to EVAL_SIZE here); ``mask`` is its ground truth
        (all False for a good image) or None if unknown."""
        small = eval_resize(np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0))
        self.all += np.bincount(value_keys(small).ravel(), minlength=N_BINS)
        self.n_images += 1
        if mask is not None:
            super().add(eval_resize(np.asarray(mask, dtype=np.float32)) >= 0.5, small)

    def quantile(self, q: float) -> float | None:
        total = int(self.all.sum())
        if total == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.all), q * total, side="left"))
        return min(k, N_BINS - 1) * BIN_WIDTH

    def scale(self, threshold: float | None = None) -> ColourScale:
        lo, hi = self.quantile(LOW_QUANTILE), self.quantile(HIGH_QUANTILE)
        if threshold is not None:
            low = lo if lo is not None and lo < threshold else threshold - max(abs(threshold) * 0.1, 1e-3)
            return ColourScale(low, 2 * threshold - low, "threshold", threshold)
        if lo is None or hi is None:
            return ColourScale(0.0, 1.0, "empty")
        if hi - lo < 2 * BIN_WIDTH:  # (nearly) constant maps: keep the value mid-bar
            lo, hi = lo - BIN_WIDTH, hi + BIN_WIDTH
        return ColourScale(lo, hi, "quantiles")

    def save(self, path: Path) -> None:
        """Sparse, compressed ``.npz`` (most bins are empty)."""
        used = np.flatnonzero(self.all | self.normal | self.defect | (self.regions > 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, bins=used, all=self.all[used], normal=self.normal[used],
                            defect=self.defect[used], regions=self.regions[used],
                            n_regions=self.n_regions, n_images=self.n_images, n_bins=N_BINS)
        tmp.replace(path)


def pixel_curves(path: Path) -> dict[str, np.ndarray] | None:
    """Pixel ROC (fpr, tpr) and PRO (fpr, pro) curves from a saved :class:`PixelStats` file,
    one point per used bin, thresholds descending; None when undefined or unreadable."""
    try:
        with np.load(path) as z:
            bins, normal, defect, regions = z["bins"], z["normal"], z["defect"], z["regions"]
            n_regions = int(z["n_regions"])
    except (OSError, KeyError, ValueError):
        return None
    order = np.argsort(bins)[::-1]
    normal, defect, regions = normal[order], defect[order], regions[order]
    n_neg, n_pos = normal.sum(), defect.sum()
    if n_neg == 0 or n_pos == 0:
        return None
    fpr = np.concatenate([[0.0], np.cumsum(normal) / n_neg])
    tpr = np.concatenate([[0.0], np.cumsum(defect) / n_pos])
    pro = np.concatenate([[0.0], np.cumsum(regions) / max(n_regions, 1)])
    return {"fpr": fpr, "tpr": tpr, "pro": np.minimum(pro, 1.0)}
