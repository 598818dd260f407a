"""What a detector returns: per-image results, explanations and decision thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class Descriptor(NamedTuple):
    """One explanation: a description of the class, which side it describes, where it
    came from, and its cosine similarity to the image (or tile) embedding."""

    text: str
    side: str  # "normal" or "abnormal"
    source: str  # the prompt source ("llm", ...) or "llm-descriptor" (paper section 5.4)
    similarity: float

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "side": self.side, "source": self.source, "similarity": round(self.similarity, 4)}

    def readable(self) -> str:
        return f"{self.text} [{self.side}, {self.source}, {self.similarity:.3f}]"


@dataclass
class Thresholds:
    """Decision thresholds derived from normal images at a target false-positive rate.

    ``image``: the (1 - fpr) quantile of the normal images' scores.  ``pixel``: the
    (1 - fpr) quantile of the normal images' map *maxima* -- so a normal image gets an
    empty mask as often as it gets an anomalous decision, and the threshold is never
    below the normal maps' range (where a quantile of all normal pixels would flag most
    pixels of any image whose map is shifted slightly up).
    """

    image: float
    pixel: float
    fpr: float
    n_images: int
    source: str  # "leave-one-out over the references" or "calibration images"

    def describe(self) -> str:
        floor = 1.0 / (self.n_images + 1)
        return (f"image threshold {self.image:.4f}: the (1 - {self.fpr:g}) quantile of the scores of {self.n_images} "
                f"normal images ({self.source}); pixel threshold {self.pixel:.4f}: the same quantile of their "
                f"maps' maxima. With {self.n_images} normal images the image-level false-positive rate is only "
                f"estimated to about 1/(n+1) = {floor:.2g}; a target below that is not guaranteed, and nothing is "
                "said about anomalies missed.")

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
    mask: np.ndarray | None = None  # defect regions (scoring/masks.py) when calibrated; empty unless decision
    descriptors: list[Descriptor] = field(default_factory=list)  # top descriptions (explain)
    tiles: int = 1  # how many tiles the image was scored in (1: whole image)
    kept_sources: dict[str, list[str]] = field(default_factory=dict)  # source of each kept prompt, per side

    @property
    def mask_area(self) -> float | None:
        """Fraction of the image's pixels in the mask (None when not calibrated)."""
        return None if self.mask is None else float(self.mask.mean()) if self.mask.size else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict without the maps."""
        return {
            "score": self.score,
            "global_score": self.global_score,
            "map_max": float(self.anomaly_map.max()) if self.anomaly_map.size else 0.0,
            "decision": "" if self.decision is None else ("anomalous" if self.decision else "normal"),
            "mask_area": "" if self.mask_area is None else round(self.mask_area, 6),
            "kept_normal": len(self.kept_prompts["normal"]),
            "kept_abnormal": len(self.kept_prompts["abnormal"]),
            "total_normal": self.n_prompts["normal"],
            "total_abnormal": self.n_prompts["abnormal"],
            "tiles": self.tiles,
            "method": self.method,
            "weights": self.weights,
        }
