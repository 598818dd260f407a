"""Maps and masks at the evaluation resolution (:data:`~alfa_ad.evaluation.metrics.EVAL_SIZE`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import EVAL_SIZE


def resize_for_evaluation(amap: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(EVAL_SIZE, EVAL_SIZE)`` float32, bilinear (align_corners=False)."""
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear", align_corners=False)[0, 0].numpy()
