"""The Python API: ``Detector`` and ``detect``."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .class_state import ClassStates
from .config import DetectorConfig
from .io.images import load_image
from .io.paths import default_cache_dir
from .model.backbone import ClipBackbone
from .model.batch_memory import auto_batch_size
from .model.factory import load_backbone
from .model.names import DEFAULT_PRETRAINED
from .model.preprocess import crop, image_to_tensor, resize_to_model
from .model.text_cache import TextEmbeddingCache
from .prompting import PromptSource
from .reference_fitting import BANK_CACHE_SIZE, LEAVE_ONE_OUT_REFERENCES, ReferenceFitting, content_key
from .registry import METHODS, PROMPT_SOURCES, trait
from .results import Descriptor, DetectionResult, Thresholds
from .scoring.masks import defect_mask
from .scoring.tiling import parse_tile, plan_tiles, stitch

__all__ = ["BANK_CACHE_SIZE", "Detector", "DetectionResult", "Thresholds", "content_key", "detect"]


class Detector(ReferenceFitting, ClassStates):
    """Holds the model, the method and cached prompt embeddings for repeated calls.

    Options are those of :class:`~alfa_ad.config.DetectorConfig`; keyword arguments
    that are not config fields (``text_projection``, ``use_text``, ``anomalib_compat``,
    ...) go to the method.  ``backbone`` reuses an already built model.

    >>> det = Detector(weights="planted")          # doctest: +SKIP
    >>> det("part.png", class_name="bottle").score  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: ClipBackbone | None = None,
        *,
        config: DetectorConfig | None = None,
        sources: Sequence[PromptSource] | None = None,
        cache_dir: str | Path | None | bool = True,
        **options: Any,
    ) -> None:
        fields = set(DetectorConfig.__dataclass_fields__)
        cfg_kwargs = {k: v for k, v in options.items() if k in fields}
        method_options = {k: v for k, v in options.items() if k not in fields}
        if config is None:
            config = DetectorConfig(**cfg_kwargs)
        elif cfg_kwargs:
            if {"scales", "preset"} & set(cfg_kwargs) and "window_strides" not in cfg_kwargs:
                cfg_kwargs["window_strides"] = None  # new scales without strides: stride 1, as for a new config
            config = replace(config, **cfg_kwargs)
        if method_options:
            config = replace(config, options={**config.options, **method_options})
        parse_tile(config.tile)
        method_cls = METHODS.get(config.method)
        self.backbone = backbone or load_backbone(config.model, config.pretrained or DEFAULT_PRETRAINED,
                                                  checkpoint=config.checkpoint,
                                                  weights=config.weights, seed=config.seed, device=config.device)
        if not getattr(self.backbone, "has_text", True) and not trait(method_cls, "text_free"):
            raise ValueError(f"method {config.method} reads prompts and {self.backbone.weights.model_name} has no "
                             "text tower; use a method that reads none (patchknn, musc) or a CLIP model")
        # the record names only what was used: a pretrained tag only for pretrained weights
        info = self.backbone.weights
        pretrained = config.pretrained if info.source == "pretrained" else None
        self.config = replace(config, model=info.model_name, pretrained=pretrained)
        if backbone is not None:  # a given model: the record says which weights it holds
            if info.source in ("pretrained", "random", "planted", "mini"):
                self.config = replace(self.config, weights=info.source)
            elif info.source == "checkpoint" and info.file:
                self.config = replace(self.config, checkpoint=info.file)
        if sources is None:  # by name from the registry: the config's, else the method's defaults
            names = self.config.prompt_sources or method_cls.default_prompt_sources(self.config)
            if self.config.learned and "learned" not in names:  # learned / imported prompt embeddings
                names = (*names, "learned")
            self.config = replace(self.config, prompt_sources=tuple(names))
            sources = [src for name in names for src in PROMPT_SOURCES.get(name)(self.config, self.backbone)]
        elif self.config.learned:
            sources = [*sources, *PROMPT_SOURCES.get("learned")(self.config, self.backbone)]
        self.sources: list[PromptSource] = list(sources)
        placement = {} if self.config.contextual is None else {"contextual": self.config.contextual}
        scales = {} if self.config.scales is None else {"scales": tuple(self.config.scales)}
        strides = self.config.window_strides  # given scales mean stride 1: only other strides are passed on
        if strides is not None and not (self.config.scales is not None and set(strides) <= {1}):
            scales["window_strides"] = tuple(strides)
        self.method = method_cls(self.backbone, **scales, aligner=self.config.aligner,
                                 few_shot_scorer=self.config.few_shot_scorer, fusion=self.config.fusion,
                                 **placement, **self.config.options)
        # what is in use: the method's placement of eq. 4, its scales and their strides
        used = tuple(self.method.scales)  # a method without strides (a plug-in's, say) runs at stride 1
        self.config = replace(self.config, contextual=self.method.contextual, scales=used,
                              window_strides=tuple(getattr(self.method, "window_strides", (1,) * len(used))))
        if trait(self.method, "mutual") and self.config.tile != "none":  # whole images score each other
            if self.config.tile != "auto":
                raise ValueError(f"tile {self.config.tile!r}: {self.method.name} scores whole images against each "
                                 "other (a tile would score its own overlapping siblings); use tile none")
            self.config = replace(self.config, tile="none")
        self.refiner = None  # anomaly region refinement (refine option; alfa_ad/scoring/refine.py)
        if self.config.refine:
            from .scoring.refine import RegionRefiner

            self.refiner = RegionRefiner(self.backbone, self.config.refine_layers)
            self.config = replace(self.config, refine_layers=self.refiner.layers)
        directory = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self.text_cache = TextEmbeddingCache(directory)
        self._init_references()  # few-shot state (alfa_ad/reference_fitting.py)
        self._init_class_states()  # per-class prompts and embeddings (alfa_ad/class_state.py)
        self.backend: Any = None  # what runs the per-image model; None: the method (use_backend)
        self._batch_size: int | None = None  # resolved on first use (batch_size "auto")
        self.cache_dir = Path(directory) if directory else None  # exports cached on first use go here

    @classmethod
    def from_config(cls, record: DetectorConfig | Mapping[str, Any], **kwargs: Any) -> "Detector":
        """Rebuild a detector from a :class:`DetectorConfig` or its dict (a run record's
        ``detector`` entry); ``kwargs`` as for the constructor (``backbone``, ``cache_dir``)."""
        config = record if isinstance(record, DetectorConfig) else DetectorConfig.from_dict(record)
        return cls(config=config, **kwargs)

    @property
    def batch_size(self) -> int:
        """The configured batch size; with ``batch_size="auto"`` the one chosen by memory,
        probed once before the first batch (and again after a fit: a memory bank adds to
        each image's cost; alfa_ad/model/batch_memory.py)."""
        if self._batch_size is None:
            size = self.config.batch_size
            self._batch_size = size if isinstance(size, int) else self._probe_batch_size()
        return self._batch_size

    @property
    def images_per_call(self) -> int:
        """How many images of a class the engines hand :meth:`predict` at a time: the batch
        size, or a mutual method's group (musc scores the images of one call against each
        other)."""
        return int(self.method.group_size) if trait(self.method, "mutual") else self.batch_size

    def _probe_batch_size(self) -> int:
        bb = self.backbone

        def run(n: int) -> None:
            pixels = torch.zeros(n, 3, *bb.image_size, device=bb.device, dtype=bb.dtype)
            with torch.inference_mode():
                self.method(pixels, self.class_text("object"))

        return auto_batch_size(run, torch.device(bb.device))

    @property
    def weights_label(self) -> str:
        return self.backbone.weights.label

    # ------------------------------------------------------------ tiles
    def tile_count(self, width: int, height: int) -> int:
        """Model passes an image of ``width x height`` costs under the ``tile`` option (1: whole)."""
        return len(plan_tiles(height, width, min(self.backbone.image_size), self.config.tile) or [None])

    def _units(self, images: Sequence[Image.Image]) -> tuple[list[list[int]], list[tuple[int, Any]]]:
        """Per image the indices of its units, and the units ``(image index, box or None)``."""
        side = min(self.backbone.image_size)
        groups, units = [], []
        for i, im in enumerate(images):
            boxes = plan_tiles(im.height, im.width, side, self.config.tile) or [None]
            groups.append(list(range(len(units), len(units) + len(boxes))))
            units += [(i, box) for box in boxes]
        return groups, units

    def _unit_batches(self, images: Sequence[Image.Image], units: list[tuple[int, Any]]):
        """Model inputs for ``units``, ``batch_size`` at a time.  An image's pixel tensor is
        kept only until its last unit (tile) has been batched."""
        tensors: dict[int, torch.Tensor] = {}
        last = {i: k for k, (i, _) in enumerate(units)}
        bb = self.backbone
        for start in range(0, len(units), self.batch_size):
            crops = []
            for i, box in units[start : start + self.batch_size]:
                if i not in tensors:
                    tensors[i] = image_to_tensor(images[i])
                crops.append(crop(tensors[i], box))
            for i in [i for i in tensors if last[i] < start + self.batch_size]:
                del tensors[i]
            yield resize_to_model(crops, bb.image_size, bb.mean, bb.std, bb.device, bb.dtype)

    # ------------------------------------------------------------ scoring
    def predict(self, images: Sequence[Any], class_name: str = "object", explain: int = 0) -> list[DetectionResult]:
        """Score a batch of images (paths, PIL images or arrays) of one class.

        Large or elongated images are scored in tiles (``tile`` option, docs/method.md):
        the map is the tent-weighted blend of the tiles' maps, the image score, the
        class-token score, the kept prompts and the embedding come from the tile with the
        highest score.  ``explain``: also return the top-``explain`` LLM descriptors.
        """
        pil = [load_image(im) for im in images]
        text = self.class_text(class_name)
        ps = self.prompts(class_name)
        groups, units = self._units(pil)
        kept: list[torch.Tensor] = []  # the model inputs, when the maps are refined afterwards
        batches = self._unit_batches(pil, units)
        if self.refiner is not None:
            batches = _keeping(batches, kept)
        if self.backend is not None:  # an exported zero-shot model (use_backend)
            outs = [self.backend(pixels, text) for pixels in batches]
        else:
            fusion = self._fusion_stats(class_name)
            if trait(self.method, "mutual"):  # the images score each other (musc): all at once
                outs = self.method.score_together(batches, text, fusion)
            else:
                outs = [self.method(pixels, text, fusion) for pixels in batches]
        cat = {name: torch.cat([getattr(o, name) for o in outs]) if outs and getattr(outs[0], name) is not None
               else None for name in ("scores", "global_scores", "maps", "kept_normal", "kept_abnormal", "embeddings")}
        if self.refiner is not None:
            cat["maps"] = self._refine(kept, cat["maps"])
        results: list[DetectionResult] = []
        for im, group in zip(pil, groups):
            j = group[int(cat["scores"][group].argmax())]
            if units[group[0]][1] is None:
                amap = F.interpolate(cat["maps"][j][None, None].float(), size=(im.height, im.width),
                                     mode="bilinear", align_corners=False)[0, 0]
            else:
                amap = stitch(cat["maps"][group], [units[g][1] for g in group], (im.height, im.width))
            amap = amap.clamp(0, 1).numpy().astype(np.float32)
            score = float(cat["scores"][j])
            keep_n = None if cat["kept_normal"] is None else cat["kept_normal"][j]
            keep_a = None if cat["kept_abnormal"] is None else cat["kept_abnormal"][j]
            th = self.thresholds
            results.append(DetectionResult(
                score=score,
                anomaly_map=amap,
                global_score=float(cat["global_scores"][j]),
                kept_prompts={"normal": _select(ps.normal, keep_n), "abnormal": _select(ps.abnormal, keep_a)},
                kept_sources={"normal": _select(ps.normal_sources, keep_n),
                              "abnormal": _select(ps.abnormal_sources, keep_a)},
                n_prompts={"normal": len(ps.normal), "abnormal": len(ps.abnormal)},
                method=self.method.name,
                weights=self.weights_label,
                decision=None if th is None else score > th.image,
                mask=None if th is None else (defect_mask(amap, th.pixel) if score > th.image
                                              else np.zeros(amap.shape, dtype=bool)),
                descriptors=self._top_descriptors(cat["embeddings"][j], class_name, explain) if explain else [],
                tiles=len(group) if units[group[0]][1] is not None else 1,
            ))
        return results

    def fit_pool(self, images: Sequence[Any], seed: int = 0, source: str = "") -> list[Any]:
        """musc: fix the unlabeled images that score every later image, each image alone
        (``MuscMethod.set_pool``; what ``alfa-ad serve`` does per class): all of ``images`` up
        to the method's ``pool_cap`` (``group - 1``), else that many drawn with ``seed``.
        Returns the images chosen; ValueError (one line) for a method that takes no pool."""
        if not hasattr(self.method, "set_pool"):
            raise ValueError(f"method {self.method.name} takes no pool (musc scores images against one)")
        chosen = self.method.draw_pool(list(images), seed)
        pil = [load_image(im) for im in chosen]
        _, units = self._units(pil)
        self.thresholds = None  # thresholds belong to the scores they were set from
        self.method.set_pool(self._unit_batches(pil, units), source)
        return chosen

    def _refine(self, pixels: list[torch.Tensor], maps: torch.Tensor) -> torch.Tensor:
        """The maps of the units in ``pixels`` (batches, in order) refined (``refine`` option)."""
        out, start = [], 0
        for batch in pixels:
            n = batch.shape[0]
            out.append(self.refiner(batch, maps[start : start + n]).maps.cpu())
            start += n
        return torch.cat(out) if out else maps

    def _top_descriptors(self, embedding: torch.Tensor, class_name: str, top: int) -> list[Descriptor]:
        items, emb = self.class_descriptors(class_name)
        if not items:
            return []
        sims = emb @ F.normalize(embedding.float(), dim=-1)
        order = sims.argsort(descending=True)[:top]
        return [Descriptor(*items[int(i)], float(sims[i])) for i in order]

    def __call__(self, image: Any, class_name: str = "object", explain: int = 0) -> DetectionResult:
        return self.predict([image], class_name, explain)[0]

    # ------------------------------------------------------------ backend
    def use_backend(self, name: str = "torch", exported: str | Path | None = None, precision: str = "fp32") -> None:
        """Score with backend ``name`` (:data:`alfa_ad.registry.BACKENDS`): ``torch`` (the
        method), ``onnxruntime`` or ``openvino`` (``exported`` folder, else the export in the
        cache, written on first use).  ``ValueError`` (one line) on any problem."""
        from .backends import create_backend

        backend = create_backend(name, self, Path(exported) if exported else None, precision,
                                 self.cache_dir or default_cache_dir())
        self.backend = None if name == "torch" else backend


def _keeping(batches, kept: list):
    """``batches`` as they come, each also appended to ``kept``."""
    for batch in batches:
        kept.append(batch)
        yield batch


def _select(prompts: Sequence[str], keep: torch.Tensor | None) -> list[str]:
    if keep is None:
        return list(prompts)
    return [p for p, k in zip(prompts, keep.tolist()) if k]


@functools.lru_cache(maxsize=4)
def _cached_detector(options: tuple[tuple[str, Any], ...]) -> Detector:
    return Detector(**dict(options))


def detect(image: Any, class_name: str = "object", normals: Sequence[Any] | None = None, **options: Any) -> DetectionResult:
    """Score one image; ``options`` are :class:`Detector` keyword arguments.

    The detector for a given set of (hashable) options is built once and reused (the
    last 4 option sets); options that cannot be hashed (prompt-source objects, say)
    build a fresh one.  ``normals``: normal reference images for few-shot scoring; the
    memory bank is remembered by the references' content (the last few sets), so a
    repeated call with the same references runs no forward pass on them.
    """
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    try:
        hash(frozen)
        detector = _cached_detector(frozen)
    except TypeError:
        detector = Detector(**options)
    if normals:  # raw fusion without calibration needs no leave-one-out references
        keep = 0 if detector.config.fusion == "raw" else LEAVE_ONE_OUT_REFERENCES
        detector.fit_normals(normals, max_leave_one_out=keep)
    else:
        detector.clear_normals()
    return detector(image, class_name)
