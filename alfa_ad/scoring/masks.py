"""Defect masks from a calibrated anomaly map (pure numpy/scipy, no model).

A pixel threshold taken from normal images sits just above the normal maps'
ceiling; the window aggregation, upsampling and smoothing spread a defect's
response well beyond the defect, so ``map > threshold`` alone marks a halo several
patches wide.  Each connected region above the threshold is therefore cut at its
own half height: ``map > t + RELATIVE_LEVEL * (peak_region - t)``.  For a blurred
step the half-height contour sits on the step's edge, so the mask follows the
defect's extent; two defects of different strength each keep their own region.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RELATIVE_LEVEL = 0.5


def defect_mask(anomaly_map: np.ndarray, threshold: float, relative: float = RELATIVE_LEVEL) -> np.ndarray:
    """Bool mask of the defect regions of ``anomaly_map`` above ``threshold`` (see module doc)."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    above = amap > threshold
    if not above.any():
        return above
    labels, n = ndimage.label(above)
    peaks = np.asarray(ndimage.maximum(amap, labels, index=np.arange(1, n + 1)), dtype=np.float32)
    level = np.concatenate([[np.inf], threshold + relative * (peaks - threshold)])  # label 0: background
    return amap > level[labels]
