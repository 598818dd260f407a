"""The Python API: ``Detector`` and ``detect``."""

from __future__ import annotations

import functools
import os
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
from .io.paths import default_cache_dir
from .model.text_cache import TextEmbeddingCache
from .prompting import AlfaTemplateSource, PromptSet, PromptSource, WinClipEnsembleSource, combine
from .prompting.library import LLMPromptSource, load_library
from .prompting.templates import WINCLIP_TEMPLATES, WINCLIP_TEMPLATES_ANOMALIB


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


def shipped_libraries() -> list[Path]:
    """Prompt libraries shipped in the repository's ``prompts/`` (or ``$ALFA_AD_PROMPTS``)."""
    folder = Path(os.environ.get("ALFA_AD_PROMPTS", Path(__file__).resolve().parents[1] / "prompts"))
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def default_sources(method: str, anomalib_compat: bool = False, prompts: str | Path | None = None,
                    llm: bool = True) -> list[PromptSource]:
    """WinCLIP: its ensemble.  ALFA: unified template + LLM descriptions (``prompts`` file,
    else the shipped libraries), as in the paper's full model (Table 2)."""
    if method == "winclip":
        return [WinClipEnsembleSource(WINCLIP_TEMPLATES_ANOMALIB if anomalib_compat else WINCLIP_TEMPLATES)]
    sources: list[PromptSource] = [AlfaTemplateSource()]
    if llm:
        files = [Path(prompts)] if prompts else shipped_libraries()
        sources += [LLMPromptSource(load_library(f)) for f in files]
    return sources


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
        prompts: str | Path | None = None,
        llm_prompts: bool = True,
        cache_dir: str | Path | None | bool = True,
        batch_size: int = 8,
        **method_options: Any,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if sources is None:
            sources = default_sources(method, bool(method_options.get("anomalib_compat")), prompts, llm_prompts)
        self.sources = list(sources)
        self.backbone = backbone or load_backbone(
            model, pretrained, checkpoint=checkpoint, weights=weights, seed=seed, device=device
        )
        self.method = METHODS[method](self.backbone, tuple(scales), **method_options)
        directory = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self.text_cache = TextEmbeddingCache(directory)
        self.batch_size = batch_size
        self.thresholds: Thresholds | None = None
        self.normals: list[Image.Image] = []
        self._normal_features: list[Any] = []
        self._fit_options: dict[str, Any] = {}
        self._prompts: dict[str, PromptSet] = {}
        self._text: dict[str, Any] = {}
        self._descriptors: dict[str, tuple[list[str], torch.Tensor]] = {}

    @property
    def weights_label(self) -> str:
        return self.backbone.weights.label

    # ------------------------------------------------------------ prompts
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

    def descriptors(self, class_name: str) -> list[str]:
        """LLM descriptors of the class (paper section 5.4), from sources that have them."""
        out: list[str] = []
        for s in self.sources:
            if hasattr(s, "descriptors"):
                out += [d for d in s.descriptors(class_name) if d not in out]
        return out

    def _descriptor_state(self, class_name: str) -> tuple[list[str], torch.Tensor]:
        if class_name not in self._descriptors:
            texts = self.descriptors(class_name)
            emb = self.text_cache.encode(self.backbone, texts) if texts else torch.zeros(0, self.backbone.embed_dim)
            self._descriptors[class_name] = (texts, F.normalize(emb.float(), dim=-1))
        return self._descriptors[class_name]

    # ------------------------------------------------------------ few-shot
    def fit_normals(self, images: Sequence[Any], *, coreset: int | None = None, seed: int = 0) -> list[str]:
        """Build the memory bank from normal reference images; returns warnings.

        Raises ``ImageLoadError`` naming a corrupt reference and ``ValueError`` when
        no image is given.  ``coreset`` bounds the bank (greedy k-center per layer).
        """
        if not images:
            raise ValueError("fit_normals needs at least one normal reference image")
        self.thresholds = None  # thresholds belong to the bank they were calibrated with
        pil = [load_image(im) for im in images]
        warnings = []
        sizes = sorted({im.size for im in pil})
        if len(sizes) > 1:
            warnings.append(f"normal references have {len(sizes)} different sizes ({sizes[0]} .. {sizes[-1]}); "
                            "all are resized to the model input, so aspect-ratio changes affect the memory bank")
        modes = {_source_mode(im) for im in images} - {None}
        if len(modes) > 1:
            warnings.append(f"normal references mix image modes {sorted(modes)}; all are converted to RGB")
        batches = (self.backbone.preprocess(pil[i : i + self.batch_size]) for i in range(0, len(pil), self.batch_size))
        self._normal_features = self.method.extract_normals(batches)
        self.normals = pil
        self._fit_options = {"coreset": coreset, "seed": seed}
        self.method.set_normals(self._normal_features, **self._fit_options)
        return warnings

    def clear_normals(self) -> None:
        self.method.clear_normals()
        self.normals, self._normal_features = [], []
        self.thresholds = None

    def calibrate(self, images: Sequence[Any] | None = None, class_name: str = "object", fpr: float = 0.01,
                  max_leave_one_out: int = 16) -> Thresholds:
        """Set image and pixel thresholds at false-positive rate ``fpr`` from normal images.

        ``images``: extra normal images scored as they are.  ``None``: leave-one-out
        over the fitted references (each scored with a bank built without it; at most
        ``max_leave_one_out`` of them, chosen with the fit seed).
        """
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        self.thresholds = None
        if images is not None:
            if not images:
                raise ValueError("calibrate needs at least one normal image")
            results = self.predict(images, class_name)
            source = "calibration images"
        else:
            if len(self.normals) < 2:
                raise ValueError("leave-one-out calibration needs at least 2 normal references (fit_normals)")
            feats = self._normal_features
            order = np.random.default_rng(self._fit_options.get("seed", 0)).permutation(len(feats))
            results = []
            try:
                for i in order[:max_leave_one_out]:
                    self.method.set_normals([f for j, f in enumerate(feats) if j != i], **self._fit_options)
                    results += self.predict([self.normals[i]], class_name)
            finally:
                self.method.set_normals(feats, **self._fit_options)
            source = "leave-one-out over the references"
        scores = np.array([r.score for r in results])
        pixels = np.concatenate([r.anomaly_map[::4, ::4].ravel() for r in results])
        self.thresholds = Thresholds(float(np.quantile(scores, 1 - fpr, method="higher")),
                                     float(np.quantile(pixels, 1 - fpr, method="higher")), fpr, len(results), source)
        return self.thresholds

    # ------------------------------------------------------------ scoring
    def predict(self, images: Sequence[Any], class_name: str = "object", explain: int = 0) -> list[DetectionResult]:
        """Score a batch of images (paths, PIL images or arrays) of one class.

        ``explain``: also return the top-``explain`` LLM descriptors by similarity.
        """
        pil = [load_image(im) for im in images]
        text = self._text_state(class_name)
        ps = self.prompts(class_name)
        results: list[DetectionResult] = []
        for start in range(0, len(pil), self.batch_size):
            chunk = pil[start : start + self.batch_size]
            out = self.method(self.backbone.preprocess(chunk), text)
            for i, im in enumerate(chunk):
                amap = F.interpolate(out.maps[i][None, None].float(), size=(im.height, im.width), mode="bilinear",
                                     align_corners=False)[0, 0].clamp(0, 1).numpy().astype(np.float32)
                kept_n = _select(ps.normal, None if out.kept_normal is None else out.kept_normal[i])
                kept_a = _select(ps.abnormal, None if out.kept_abnormal is None else out.kept_abnormal[i])
                score = float(out.scores[i])
                th = self.thresholds
                results.append(
                    DetectionResult(
                        score=score,
                        anomaly_map=amap,
                        global_score=float(out.global_scores[i]),
                        kept_prompts={"normal": kept_n, "abnormal": kept_a},
                        n_prompts={"normal": len(ps.normal), "abnormal": len(ps.abnormal)},
                        method=self.method.name,
                        weights=self.weights_label,
                        decision=None if th is None else score > th.image,
                        mask=None if th is None else amap > th.pixel,
                        descriptors=self._top_descriptors(out.embeddings[i], class_name, explain) if explain else [],
                    )
                )
        return results

    def _top_descriptors(self, embedding: torch.Tensor, class_name: str, top: int) -> list[tuple[str, float]]:
        texts, emb = self._descriptor_state(class_name)
        if not texts:
            return []
        sims = emb @ F.normalize(embedding.float(), dim=-1)
        order = sims.argsort(descending=True)[:top]
        return [(texts[int(i)], float(sims[i])) for i in order]

    def __call__(self, image: Any, class_name: str = "object", explain: int = 0) -> DetectionResult:
        return self.predict([image], class_name, explain)[0]

    # ------------------------------------------------------------ VLM second opinion (issue 15)
    def explain(self, image: Any, class_name: str = "object", **options: Any) -> dict[str, Any]:
        """A vision-language model's JSON verdict on ``image`` with our score and heat map;
        ``options`` as :func:`alfa_ad.explain.vlm.explain_image` (``config=LLMConfig(...)``, normals, rules)."""
        from .explain.vlm import explain_image

        return explain_image(self, image, class_name, **options)
    # ------------------------------------------------------------ end VLM second opinion


def _source_mode(image: Any) -> str | None:
    """The stored mode of a path input (without decoding), of a PIL image, else None."""
    if isinstance(image, Image.Image):
        return image.mode
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return im.mode
        except Exception:  # noqa: BLE001 - load_image already reported unreadable files
            return None
    return None


def _select(prompts: Sequence[str], keep: torch.Tensor | None) -> list[str]:
    if keep is None:
        return list(prompts)
    return [p for p, k in zip(prompts, keep.tolist()) if k]


@functools.lru_cache(maxsize=4)
def _cached_detector(options: tuple[tuple[str, Any], ...]) -> Detector:
    return Detector(**dict(options))


def detect(image: Any, class_name: str = "object", normals: Sequence[Any] | None = None, **options: Any) -> DetectionResult:
    """Score one image; ``options`` are :class:`Detector` keyword arguments.

    ``normals``: normal reference images for few-shot scoring (a fresh detector each
    call; hold a :class:`Detector` and call ``fit_normals`` once for repeated use).
    Otherwise the detector for a given set of (hashable) options is built once and reused;
    options that cannot be hashed (e.g. prompt-source objects) build a fresh one.
    """
    if normals:
        detector = Detector(**options)
        detector.fit_normals(normals)
        return detector(image, class_name)
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    try:
        hash(frozen)
    except TypeError:
        return Detector(**options)(image, class_name)
    return _cached_detector(frozen)(image, class_name)
