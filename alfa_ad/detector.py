"""The Python API: ``Detector`` and ``detect``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io.images import load_image
from .methods import METHODS
from .model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, ClipBackbone, load_backbone
from .model.text_cache import TextEmbeddingCache, default_cache_dir
from .prompting import AlfaTemplateSource, PromptSet, PromptSource, WinClipEnsembleSource, combine
from .prompting.templates import WINCLIP_TEMPLATES, WINCLIP_TEMPLATES_ANOMALIB

ImageLike = "str | Path | Image.Image | np.ndarray"


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
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict without the map."""
        return {
            "score": self.score,
            "global_score": self.global_score,
            "map_max": float(self.anomaly_map.max()) if self.anomaly_map.size else 0.0,
            "kept_normal": len(self.kept_prompts["normal"]),
            "kept_abnormal": len(self.kept_prompts["abnormal"]),
            "total_normal": self.n_prompts["normal"],
            "total_abnormal": self.n_prompts["abnormal"],
            "method": self.method,
            "weights": self.weights,
        }


def default_sources(method: str, anomalib_compat: bool = False) -> list[PromptSource]:
    if method == "winclip":
        return [WinClipEnsembleSource(WINCLIP_TEMPLATES_ANOMALIB if anomalib_compat else WINCLIP_TEMPLATES)]
    return [AlfaTemplateSource()]


class Detector:
    """Holds the model, the method and cached prompt embeddings for repeated calls.

    >>> det = Detector(weights="planted")          # doctest: +SKIP
    >>> det("part.png", class_name="bottle").score  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: ClipBackbone | None = None,
        *,
        method: str = "alfa",
        model: str = DEFAULT_MODEL,
        pretrained: str = DEFAULT_PRETRAINED,
        checkpoint: str | Path | None = None,
        weights: str = "pretrained",
        seed: int = 0,
        device: str | None = None,
        scales: Sequence[int] = (2, 3),
        sources: Sequence[PromptSource] | None = None,
        cache_dir: str | Path | None | bool = True,
        batch_size: int = 8,
        **method_options: Any,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        self.backbone = backbone or load_backbone(
            model, pretrained, checkpoint=checkpoint, weights=weights, seed=seed, device=device
        )
        self.method = METHODS[method](self.backbone, tuple(scales), **method_options)
        self.sources = list(sources) if sources is not None else default_sources(method, bool(method_options.get("anomalib_compat")))
        directory = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self.text_cache = TextEmbeddingCache(directory)
        self.batch_size = batch_size
        self._prompts: dict[str, PromptSet] = {}
        self._text: dict[str, Any] = {}

    @property
    def weights_label(self) -> str:
        return self.backbone.weights.label

    def prompts(self, class_name: str) -> PromptSet:
        if class_name not in self._prompts:
            self._prompts[class_name] = combine(s.prompts(class_name) for s in self.sources)
        return self._prompts[class_name]

    def _text_state(self, class_name: str):
        if class_name not in self._text:
            ps = self.prompts(class_name)
            if not ps.normal or not ps.abnormal:
                raise ValueError(f"class {class_name!r}: the prompt sources gave no normal or no abnormal prompt")
            normal = self.text_cache.encode(self.backbone, ps.normal)
            abnormal = self.text_cache.encode(self.backbone, ps.abnormal)
            self._text[class_name] = self.method.prepare_text(normal, abnormal)
        return self._text[class_name]

    def predict(self, images: Sequence[Any], class_name: str = "object") -> list[DetectionResult]:
        """Score a batch of images (paths, PIL images or arrays) of one class."""
        pil = [load_image(im) for im in images]
        text = self._text_state(class_name)
        ps = self.prompts(class_name)
        results: list[DetectionResult] = []
        for start in range(0, len(pil), self.batch_size):
            chunk = pil[start : start + self.batch_size]
            out = self.method(self.backbone.preprocess(chunk), text)
            for i, im in enumerate(chunk):
                amap = F.interpolate(out.maps[i][None, None].float(), size=(im.height, im.width), mode="bilinear",
                                     align_corners=False)[0, 0]
                kept_n = _select(ps.normal, None if out.kept_normal is None else out.kept_normal[i])
                kept_a = _select(ps.abnormal, None if out.kept_abnormal is None else out.kept_abnormal[i])
                results.append(
                    DetectionResult(
                        score=float(out.scores[i]),
                        anomaly_map=amap.clamp(0, 1).numpy().astype(np.float32),
                        global_score=float(out.global_scores[i]),
                        kept_prompts={"normal": kept_n, "abnormal": kept_a},
                        n_prompts={"normal": len(ps.normal), "abnormal": len(ps.abnormal)},
                        method=self.method.name,
                        weights=self.weights_label,
                    )
                )
        return results

    def __call__(self, image: Any, class_name: str = "object") -> DetectionResult:
        return self.predict([image], class_name)[0]


def _select(prompts: Sequence[str], keep: torch.Tensor | None) -> list[str]:
    if keep is None:
        return list(prompts)
    return [p for p, k in zip(prompts, keep.tolist()) if k]


@functools.lru_cache(maxsize=4)
def _cached_detector(**kwargs: Any) -> Detector:
    return Detector(**kwargs)


def detect(image: Any, class_name: str = "object", normals: Sequence[Any] | None = None, **options: Any) -> DetectionResult:
    """Score one image; ``options`` are :class:`Detector` keyword arguments.

    The detector for a given set of options is built once and reused.
    """
    if normals:
        raise NotImplementedError("few-shot detection with normals is not available in this version; pass normals=None")
    return _cached_detector(**options)(image, class_name)
