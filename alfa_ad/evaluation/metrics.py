"""Detection metrics (scikit-learn); ``None`` means undefined (e.g. one class only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

EVAL_SIZE = 256  # maps and masks are compared at 256 x 256


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    y = np.asarray(labels)
    if y.size == 0 or np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """AUROC over every pixel of ``masks`` (bool, N x H x W) against ``maps`` (same shape)."""
    y = np.asarray(masks, dtype=bool).ravel()
    if y.size == 0 or y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(maps, dtype=np.float32).ravel()))
