"""The Python API: ``Detector`` and ``detect``."""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import DetectorConfig
from .io.images import load_image
from .io.paths import default_cache_dir
from .model.backbone import ClipBackbone
from .model.factory import load_backbone
from .model.preprocess import crop, image_to_tensor, resize_to_model
from .model.text_cache import TextEmbeddingCache
from .prompting import AlfaTemplateSource, PromptSet, PromptSource, WinClipEnsembleSource, combine
from .prompting.library import LLMPromptSource, load_library
from .prompting.templates import WINCLIP_TEMPLATES, WINCLIP_TEMPLATES_ANOMALIB
from .registry import METHODS
from .results import Descriptor, DetectionResult, Thresholds
from .scoring.fusion import fuse, reference_stats
from .scoring.masks import defect_mask
from .scoring.tiling import parse_tile, plan_tiles, stitch

__all__ = ["Detector", "DetectionResult", "Thresholds", "detect", "default_sources", "shipped_libraries"]

BANK_CACHE_SIZE = 4  # fitted memory banks a Detector remembers (keyed by the references' content)


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


def content_key(images: Sequence[Any], extra: str = "") -> str:
    """A digest of the references' content (file bytes, PIL pixels or array bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode())
    for im in images:
        if isinstance(im, (str, os.PathLike)):
            try:
                h.update(Path(im).read_bytes())
            except OSError:
                h.update(f"unreadable:{im}".encode())  # load_image reports it when the bank is built
        elif isinstance(im, Image.Image):
            h.update(f"{im.mode}{im.size}".encode())
            h.update(im.tobytes())
        elif isinstance(im, np.ndarray):
            h.update(f"{im.dtype}{im.shape}".encode())
            h.update(np.ascontiguousarray(im).tobytes())
        else:
            h.update(repr(im).encode())
        h.update(b"|")
    return h.hexdigest()


class Detector:
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
            config = replace(config, **cfg_kwargs)
        if method_options:
            config = replace(config, options={**config.options, **method_options})
        parse_tile(config.tile)
        method_cls = METHODS.get(config.method)
        if sources is None:
            sources = default_sources(config.method, bool(config.options.get("anomalib_compat")), config.prompts,
                                      config.llm_prompts)
        self.sources = list(sources)
        self.backbone = backbone or load_backbone(config.model, config.pretrained, checkpoint=config.checkpoint,
                                                  weights=config.weights, seed=config.seed, device=config.device)
        self.config = replace(config, model=self.backbone.weights.model_name)
        if self.config.learned:  # learned / imported prompt embeddings: one more source, checked against the model
            from .prompting.learned import LearnedPromptSource

            self.sources.append(LearnedPromptSource.load(self.config.learned, self.backbone))
        self.method = method_cls(self.backbone, tuple(self.config.scales), aligner=self.config.aligner,
                                 few_shot_scorer=self.config.few_shot_scorer, fusion=self.config.fusion,
                                 **self.config.options)
        directory = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self.text_cache = TextEmbeddingCache(directory)
        self.thresholds: Thresholds | None = None
        self.normals: list[str] = []  # one label per fitted reference (features are kept, not images)
        self._normal_groups: list[list[int]] = []  # per reference image: its units (tiles) in the features
        self._loo_images: dict[int, Image.Image] = {}  # the <= 16 references scored zero-shot for calibration
        self._class_parts: dict[str, Any] = {}  # class -> references' zero-shot parts and fusion statistics
        self._fit_options: dict[str, Any] = {}
        self._banks: OrderedDict[str, tuple] = OrderedDict()
        self.prompt_classes: dict[str, str] = {}  # class name -> prompt-library class (``--prompt-class``)
        self._prompts: dict[str, PromptSet] = {}
        self._text: dict[str, Any] = {}
        self._descriptors: dict[str, tuple[list[tuple[str, str, str]], torch.Tensor]] = {}
        self.backend: Any = None  # what runs the per-image model; None: the method (issue 14, use_backend)
        self.cache_dir = Path(directory) if directory else None  # exports cached on first use go here

    @classmethod
    def from_config(cls, record: DetectorConfig | Mapping[str, Any], **kwargs: Any) -> "Detector":
        """Rebuild a detector from a :class:`DetectorConfig` or its dict (a run record's
        ``detector`` entry); ``kwargs`` as for the constructor (``backbone``, ``cache_dir``)."""
        config = record if isinstance(record, DetectorConfig) else DetectorConfig.from_dict(record)
        return cls(config=config, **kwargs)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def weights_label(self) -> str:
        return self.backbone.weights.label

    # ------------------------------------------------------------ prompts
    def set_prompt_class(self, class_name: str, library_class: str) -> None:
        """Let prompt libraries answer for ``class_name`` with their ``library_class`` entry
        (a folder ``hazelnut_toy`` scored with the shipped ``hazelnut`` prompts, say)."""
        self.prompt_classes[class_name] = library_class
        for cache in (self._prompts, self._text, self._descriptors):
            cache.pop(class_name, None)

    def _source_class(self, source: PromptSource, class_name: str) -> str:
        return self.prompt_classes.get(class_name, class_name) if hasattr(source, "library") else class_name

    def prompts(self, class_name: str) -> PromptSet:
        if class_name not in self._prompts:
            self._prompts[class_name] = combine(s.prompts(self._source_class(s, class_name)) for s in self.sources)
        return self._prompts[class_name]

    def _text_state(self, class_name: str):
        if class_name not in self._text:
            ps = self.prompts(class_name)
            if not ps.normal or not ps.abnormal:
                raise ValueError(f"class {class_name!r}: the prompt sources gave no normal or no abnormal prompt")
            normal = self._embed(ps.normal, ps.embeddings)
            abnormal = self._embed(ps.abnormal, ps.embeddings)
            self._text[class_name] = self.method.prepare_text(normal, abnormal)
        return self._text[class_name]

    def _embed(self, prompts: Sequence[str], known: Mapping[str, Any]) -> torch.Tensor:
        """Raw embeddings ``(N, D)`` of ``prompts``: those a source supplies (``known``, learned
        prompts) as given, texts through the text encoder and its cache."""
        texts = [p for p in prompts if p not in known]
        encoded = dict(zip(texts, self.text_cache.encode(self.backbone, texts))) if texts else {}
        rows = [torch.as_tensor(known[p]).float().cpu() if p in known else encoded[p] for p in prompts]
        bad = [p for p, r in zip(prompts, rows) if r.shape != (self.backbone.embed_dim,)]
        if bad:
            raise ValueError(f"prompt {bad[0]!r}: embedding of shape {tuple(rows[prompts.index(bad[0])].shape)}, "
                             f"but the model embeds text in {self.backbone.embed_dim} dimensions")
        return torch.stack(rows) if rows else torch.zeros(0, self.backbone.embed_dim)

    def explanation_candidates(self, class_name: str) -> list[tuple[str, str, str]]:
        """``(text, side, source)`` of every description ``explain`` ranks: the descriptors of
        paper section 5.4 (side abnormal) and the normal and abnormal prompts of every
        non-template source (LLM; learned prompts by name, ``learned:abnormal:3``);
        template prompts explain nothing."""
        out: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for s in self.sources:
            name = self._source_class(s, class_name)
            items = [(d, "abnormal", f"{s.name}-descriptor") for d in getattr(s, "descriptors", lambda c: [])(name)]
            if s.name not in ("template", "winclip"):
                ps = s.prompts(name)
                items += [(t, "normal", s.name) for t in ps.normal] + [(t, "abnormal", s.name) for t in ps.abnormal]
            for item in items:
                if item[0] not in seen:
                    seen.add(item[0])
                    out.append(item)
        return out

    def descriptors(self, class_name: str) -> list[str]:
        """The texts :meth:`explanation_candidates` offers for the class."""
        return [t for t, _, _ in self.explanation_candidates(class_name)]

    def _descriptor_state(self, class_name: str) -> tuple[list[tuple[str, str, str]], torch.Tensor]:
        if class_name not in self._descriptors:
            items = self.explanation_candidates(class_name)
            texts = [t for t, _, _ in items]
            emb = self._embed(texts, self.prompts(class_name).embeddings)
            self._descriptors[class_name] = (items, F.normalize(emb.float(), dim=-1))
        return self._descriptors[class_name]

    # ------------------------------------------------------------ tiles
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
        """Model inputs for ``units``, ``batch_size`` at a time."""
        tensors: dict[int, torch.Tensor] = {}
        bb = self.backbone
        for start in range(0, len(units), self.batch_size):
            crops = []
            for i, box in units[start : start + self.batch_size]:
                if i not in tensors:
                    tensors[i] = image_to_tensor(images[i])
                crops.append(crop(tensors[i], box))
            yield resize_to_model(crops, bb.image_size, bb.mean, bb.std, bb.device, bb.dtype)

    # ------------------------------------------------------------ few-shot
    def fit_normals(self, images: Sequence[Any], *, coreset: int | None = None, seed: int = 0,
                    max_leave_one_out: int = 16) -> list[str]:
        """Fit the few-shot scorer on normal reference images; returns warnings.

        Raises ``ImageLoadError`` naming a corrupt reference and ``ValueError`` when
        no image is given.  ``coreset`` bounds each token set (greedy k-center, computed
        once).  References are tiled like test images.  Kept afterwards: the coreset, each
        reference's leave-one-out visual results, and the decoded pixels of at most
        ``max_leave_one_out`` references (chosen with ``seed``), which calibration and
        normalized fusion score zero-shot once per class; not the references' features.
        The last :data:`BANK_CACHE_SIZE` fits are remembered by the references' content,
        so fitting the same references again costs no forward pass.
        """
        if not images:
            raise ValueError("fit_normals needs at least one normal reference image")
        self.thresholds = None  # thresholds belong to the bank they were calibrated with
        self._class_parts = {}
        options = {"coreset": coreset, "seed": seed}
        key = content_key(images, f"{coreset}|{seed}|{self.config.tile}|{max_leave_one_out}")
        if key in self._banks:
            self._banks.move_to_end(key)
            self.normals, self._normal_groups, bank, self._loo_images, warnings = self._banks[key]
            self._fit_options = options
            self.method.import_bank(bank)
            return list(warnings)
        pil = [load_image(im) for im in images]
        warnings = []
        sizes = sorted({im.size for im in pil})
        if len(sizes) > 1:
            warnings.append(f"normal references have {len(sizes)} different sizes ({sizes[0]} .. {sizes[-1]}); "
                            "all are resized to the model input, so aspect-ratio changes affect the memory bank")
        modes = {_source_mode(im) for im in images} - {None}
        if len(modes) > 1:
            warnings.append(f"normal references mix image modes {sorted(modes)}; all are converted to RGB")
        groups, units = self._units(pil)
        features = self.method.extract_normals(self._unit_batches(pil, units))
        self.method.set_normals(features, owners=[i for i, _ in units], **options)
        del features
        order = np.random.default_rng(seed).permutation(len(pil))[:max_leave_one_out]
        self._loo_images = {int(i): pil[i] for i in order}
        self.normals = [str(im) if isinstance(im, (str, os.PathLike)) else f"<image {i}>" for i, im in enumerate(images)]
        self._normal_groups = groups
        self._fit_options = options
        self._banks[key] = (self.normals, groups, self.method.export_bank(), self._loo_images, tuple(warnings))
        while len(self._banks) > BANK_CACHE_SIZE:
            self._banks.popitem(last=False)
        return warnings

    def clear_normals(self) -> None:
        self.method.clear_normals()
        self.normals, self._normal_groups, self._loo_images, self._class_parts = [], [], {}, {}
        self.thresholds = None

    def _reference_parts(self, class_name: str) -> dict[str, Any]:
        """The references' zero-shot parts for ``class_name`` (one zero-shot pass over the kept
        references, once per class) and the fusion statistics (None: raw fusion)."""
        if class_name in self._class_parts:
            return self._class_parts[class_name]
        refs = self.method.export_bank()
        chosen = list(self._loo_images)
        images = [self._loo_images[i] for i in chosen]
        groups, units = self._units(images)
        text = self._text_state(class_name)
        parts = [self.method.zero_shot_parts(p, text) for p in self._unit_batches(images, units)]
        language = None if parts[0][0] is None else torch.cat([p[0] for p in parts]).cpu()
        global_ = None if parts[0][1] is None else torch.cat([p[1] for p in parts]).cpu()
        subset = [self._normal_groups[i][k] for i, g in zip(chosen, groups) for k in range(len(g))]
        stats = None
        if self.config.fusion == "normalized" and refs is not None and refs.loo_visual is not None:
            stats = reference_stats(refs.loo_visual, refs.loo_image, language, global_, subset,
                                    getattr(self.method, "peak_of_visual", False))
        out = {"chosen": chosen, "groups": groups, "subset": subset, "language": language, "global": global_,
               "stats": stats}
        self._class_parts[class_name] = out
        return out

    def _fusion_stats(self, class_name: str):
        if self.config.fusion != "normalized" or self.method.export_bank() is None or len(self.normals) < 2:
            return None
        return self._reference_parts(class_name)["stats"]

    def fusion_statistics(self, class_name: str = "object") -> dict[str, Any] | None:
        """The reference statistics normalized fusion uses for ``class_name`` (None: raw fusion)."""
        stats = self._fusion_stats(class_name)
        return None if stats is None else stats.as_dict()

    def calibrate(self, images: Sequence[Any] | None = None, class_name: str = "object", fpr: float = 0.01,
                  max_leave_one_out: int = 16) -> Thresholds:
        """Set image and pixel thresholds at false-positive rate ``fpr`` from normal images.

        ``images``: extra normal images scored as they are.  ``None``: leave-one-out over
        the fitted references (at most ``max_leave_one_out`` of those kept at fit time):
        each one's visual part against the other references was computed at fit time
        from a coreset computed once; its zero-shot part comes from one pass per class.
        No model run per left-out reference, no coreset per left-out reference.
        """
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        self.thresholds = None
        if images is not None:
            if not images:
                raise ValueError("calibrate needs at least one normal image")
            results = self.predict(images, class_name)
            scores = np.array([r.score for r in results])
            maxima = np.array([r.anomaly_map.max() for r in results])
            source = "calibration images"
        else:
            if len(self.normals) < 2:
                raise ValueError("leave-one-out calibration needs at least 2 normal references (fit_normals)")
            scores, maxima = self._leave_one_out(class_name, max_leave_one_out)
            source = "leave-one-out over the references"
        self.thresholds = Thresholds(float(np.quantile(scores, 1 - fpr, method="higher")),
                                     float(np.quantile(maxima, 1 - fpr, method="higher")), fpr, len(scores), source)
        return self.thresholds

    def _leave_one_out(self, class_name: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Per kept reference: its score and map maximum with the others as references.
        A tiled reference takes its highest tile score and tile-map maximum."""
        parts = self._reference_parts(class_name)
        refs = self.method.export_bank()
        subset = parts["subset"]
        visual = refs.loo_visual[subset]
        image = None if refs.loo_image is None else refs.loo_image[subset]
        stats = parts["stats"] if self.config.fusion == "normalized" else None
        patch, unit_scores, normalized = fuse(parts["language"], parts["global"], visual, image, stats,
                                              getattr(self.method, "peak_of_visual", False))
        with torch.inference_mode():
            maps = self.method.finish(patch.view(-1, *self.backbone.grid).to(self.backbone.device), normalized)
        maps = maps.float().cpu()
        scores, maxima = [], []
        for i, g in zip(parts["chosen"][:limit], parts["groups"][:limit]):
            scores.append(float(unit_scores[g].max()))
            if len(g) == 1:  # as predict: the map resized to the image, then its maximum
                im = self._loo_images[i]
                full = F.interpolate(maps[g[0]][None, None], size=(im.height, im.width), mode="bilinear",
                                     align_corners=False)
                maxima.append(float(full.clamp(0, 1).max()))
            else:  # tiles: the largest tile maximum (the blend cannot exceed it)
                maxima.append(float(maps[g].clamp(0, 1).max()))
        return np.array(scores), np.array(maxima)

    # ------------------------------------------------------------ scoring
    def predict(self, images: Sequence[Any], class_name: str = "object", explain: int = 0) -> list[DetectionResult]:
        """Score a batch of images (paths, PIL images or arrays) of one class.

        Large or elongated images are scored in tiles (``tile`` option, docs/method.md):
        the map is the tent-weighted blend of the tiles' maps, the image score, the
        class-token score, the kept prompts and the embedding come from the tile with the
        highest score.  ``explain``: also return the top-``explain`` LLM descriptors.
        """
        pil = [load_image(im) for im in images]
        text = self._text_state(class_name)
        ps = self.prompts(class_name)
        groups, units = self._units(pil)
        if self.backend is not None:  # an exported zero-shot model (use_backend)
            outs = [self.backend(pixels, text) for pixels in self._unit_batches(pil, units)]
        else:
            fusion = self._fusion_stats(class_name)
            outs = [self.method(pixels, text, fusion) for pixels in self._unit_batches(pil, units)]
        cat = {name: torch.cat([getattr(o, name) for o in outs]) if outs and getattr(outs[0], name) is not None
               else None for name in ("scores", "global_scores", "maps", "kept_normal", "kept_abnormal", "embeddings")}
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

    def _top_descriptors(self, embedding: torch.Tensor, class_name: str, top: int) -> list[Descriptor]:
        items, emb = self._descriptor_state(class_name)
        if not items:
            return []
        sims = emb @ F.normalize(embedding.float(), dim=-1)
        order = sims.argsort(descending=True)[:top]
        return [Descriptor(*items[int(i)], float(sims[i])) for i in order]

    def __call__(self, image: Any, class_name: str = "object", explain: int = 0) -> DetectionResult:
        return self.predict([image], class_name, explain)[0]

    # ------------------------------------------------------------ backend (issue 14)
    def use_backend(self, name: str = "torch", exported: str | Path | None = None, precision: str = "fp32") -> None:
        """Score with backend ``name`` (:data:`alfa_ad.registry.BACKENDS`): ``torch`` (the
        method), ``onnxruntime`` or ``openvino`` (``exported`` folder, else the export in the
        cache, written on first use).  ``ValueError`` (one line) on any problem."""
        from .backends import create_backend

        backend = create_backend(name, self, Path(exported) if exported else None, precision,
                                 self.cache_dir or default_cache_dir())
        self.backend = None if name == "torch" else backend
    # ------------------------------------------------------------ end backend

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
    if normals:
        detector.fit_normals(normals)
    else:
        detector.clear_normals()
    return detector(image, class_name)
