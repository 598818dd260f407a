"""What a detector returns: per-image results and decision thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Thresholds:
    """Decision thresholds derived from normal images at a target false-positive rate."""

    image: float
    pixel: float
    fpr: float
    n_images: int
    source: str  # "leave-one-out over the references" or "calibration images"

    def describe(self) -> str:
        floor = 1.0 / (self.n_images + 1)
        return (f"image threshold {self.image:.4f} and pixel threshold {self.pixel:.4f}: the (1 - {self.fpr:g}) "
                f"quantiles of the scores of {self.n_images} normal images ({self.source}). With {self.n_images} "
                f"normal images the image-level false-positive rate is only estimated to about 1/(n+1) = "
                f"{floor:.2g}; a target below that is not guaranteed, and nothing is said about anomalies missed.")

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "pixel": self.pixel, "fpr": self.fpr, "n_images": self.n_images,
                "source": self.source, "description": self.describe()}


@dataclass
class DetectionResult:
    """One image's result."""

    score: float  # image anomaly score in [0, 1]
    anomaly_map: np.ndarray  # (H, W) float32 in [0, 1], at the input image's size
    global_score: float  # class-token score (eq. 10)
    kept_prompts: dict[str, list[str]]  # {"normal": [...], "abnormal": [...]} used for this image
    n_prompts: dict[str, int]  # totals before adaptation
    method: str
    weights: str  # weights label, says "random weights" when they are
    decision: bool | None = None  # score > image threshold, when thresholds are calibrated
    mask: np.ndarray | None = None  # anomaly_map > pixel threshold, when calibrated
    descriptors: list[tuple[str, float]] = field(default_factory=list)  # top LLM descriptors (explain)
    tiles: int = 1  # how many tiles the image was scored in (1: whole image)

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict without the maps."""
        return {
            "score": self.score,
            "global_score": self.global_score,
            "map_max": float(self.anomaly_map.max()) if self.anomaly_map.size else 0.0,
            "decision": "" if self.decision is None else ("anomalous" if self.decision else "normal"),
            "kept_normal": len(self.kept_prompts["normal"]),
            "kept_abnormal": len(self.kept_prompts["abnormal"]),
            "total_normal": self.n_prompts["normal"],
            "total_abnormal": self.n_prompts["abnormal"],
            "method": self.method,
            "weights": self.weights,
        }
