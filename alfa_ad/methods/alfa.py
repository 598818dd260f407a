"""ALFA: run-time prompt adaptation + fine-grained aligner (docs/method.md), with an
optional few-shot memory bank of normal patch features.

The per-image math is :class:`~alfa_ad.methods.alfa_head.AlfaHead` (a torch module);
this class holds it, the prompt embeddings' preparation and the memory bank, and hands
:class:`~alfa_ad.methods.base.BatchScores` on the CPU to the detector.
"""

from __future__ import annotations

from typing import Collection, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..aligners import TEXT_PROJECTIONS, build_aligner
from ..model.backbone import ClipBackbone
from ..aligners.base import encode, select_rows
from ..registry import DEFAULT_ALIGNER
from ..scoring.contextual import DEFAULT_PLACEMENT
from ..scoring.fewshot import default_memory_layers, image_residual, visual_map
from ..scoring.fusion import FusionStats, fuse
from ..scoring.window_spec import ALFA_SCALES, ALFA_STRIDES, default_window_geometry
from ..scoring.zero_shot import TEMPERATURE
from .alfa_head import AlfaHead
from .base import BatchScores, ReferenceBank, ZeroShotFeatures, extract_references

# ALFA's defaults, chosen on the mini-CLIP tables (docs/mini_clip.md, docs/mini_clip_v2.md):
# the windows of scoring/window_spec.py (scales 2, 3, 4, 5 every 1, 2, 3, 3 patches); eq. (4)
# off (scoring/placement.py); the image-level score as one more term of the map's harmonic
# mean (global_in_map); smoothing by an eighth of a patch
DEFAULT_SCALES, DEFAULT_STRIDES = ALFA_SCALES, ALFA_STRIDES

__all__ = ["AlfaMethod", "DEFAULT_SCALES", "DEFAULT_STRIDES", "TEXT_PROJECTIONS", "default_memory_layers",
           "default_window_geometry"]


class AlfaMethod(ReferenceBank):
    name = "alfa"
    peak_of_visual = False

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: tuple[int, ...] | None = None,
        temperature: float = TEMPERATURE,
        k: float = 1.0,
        sigma: float | None = None,
        text_projection: str | None = None,
        memory_layers: Sequence[int] | None = None,
        use_text: bool = True,
        aligner: str = DEFAULT_ALIGNER,
        contextual: str | bool = DEFAULT_PLACEMENT,
        few_shot_scorer: str = "bank",
        fusion: str = "raw",
        global_in_map: bool = True,
        window_strides: Sequence[int] | None = None,
    ) -> None:
        if text_projection is not None and text_projection not in TEXT_PROJECTIONS:
            raise ValueError(f"text_projection must be one of {TEXT_PROJECTIONS}")
        self.backbone = backbone
        self._init_bank(backbone, few_shot_scorer, memory_layers, fusion)
        if scales is None:  # the default pair; given scales without strides: stride 1
            scales, default_strides = default_window_geometry(backbone.grid)
            window_strides = default_strides if window_strides is None else window_strides
        if sigma is None:  # an eighth of a patch, in model pixels (ViT-B/16: 2 px; the mini-CLIP: 1 px)
            sigma = backbone.image_size[0] / backbone.grid[0] / 8
        self.head = AlfaHead(build_aligner(aligner, backbone, text_projection=text_projection), backbone.grid,
                             backbone.image_size, scales, temperature, k, sigma, contextual, use_text,
                             global_in_map=global_in_map, strides=window_strides).to(backbone.device)

    @classmethod
    def default_prompt_sources(cls, config) -> tuple[str, ...]:
        """The unified templates; with ``llm_prompts`` (or a ``prompts`` file) the LLM libraries too."""
        return ("template", "llm") if config.llm_prompts or config.prompts else ("template",)

    # options as attributes (what tests and reports read)
    @property
    def aligner(self):
        return self.head.aligner

    @property
    def contextual(self) -> str:
        """Where eq. (4)'s prompt selection applies (:mod:`alfa_ad.scoring.placement`)."""
        return self.head.contextual

    @property
    def text_projection(self) -> str:
        return self.head.aligner.text_projection

    @property
    def memory_layers(self) -> tuple[int, ...]:
        """Blocks the few-shot scorer reads (``memory_layers`` option; default per scorer)."""
        return self.scorer.layers

    @property
    def use_text(self) -> bool:
        return self.head.use_text

    @property
    def scales(self) -> tuple[int, ...]:
        return self.head.scales

    @property
    def window_strides(self) -> tuple[int, ...]:
        return self.head.strides

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-normalised prompt embeddings; the per-image selection happens in the head."""
        device = self.backbone.device
        return F.normalize(normal.float(), dim=-1).to(device), F.normalize(abnormal.float(), dim=-1).to(device)

    # ------------------------------------------------------------- few-shot
    @torch.inference_mode()
    def extract_normals(self, batches: Iterable[torch.Tensor], keep: Collection[int] = ()):
        """Per normal unit (image or tile): the scorer's token sets and image embedding; and the
        zero-shot features of the units in ``keep`` (:func:`~alfa_ad.methods.base.extract_references`)."""

        def reference_pass(pixels, rows):
            feats = encode(self.backbone, pixels, self.scorer.capture)
            zero_shot = self.zero_shot_features(select_rows(feats, rows)) if rows else None
            return self.scorer.tokens(feats.caps, feats.last), self.scorer.image(feats.g), zero_shot

        return extract_references(batches, reference_pass, keep)

    def covers(self) -> list[None]:
        return [None] * len(self.scorer.layers)

    @property
    def bank(self) -> list[torch.Tensor] | None:
        return None if self.refs is None else self.refs.sets

    def zero_shot_features(self, feats) -> ZeroShotFeatures | None:
        """The class-independent half of the zero-shot pass (None without text)."""
        if not self.use_text:
            return None
        return ZeroShotFeatures(feats.g, self.head.local_embeddings(feats))

    @torch.inference_mode()
    def zero_shot_scores(self, features: ZeroShotFeatures, text) -> tuple[torch.Tensor, torch.Tensor]:
        """Language map ``(B, P)`` and class-token score ``(B,)`` of zero-shot features."""
        ad = self.head.adapt(features.g, *text)
        language = self.head.language_map(features.g, features.local, ad.local_classes, global_scores=ad.global_scores)
        return language.flatten(1), ad.global_scores

    def finish(self, patch_map: torch.Tensor, normalized: bool) -> torch.Tensor:
        """``(B, gh, gw)`` -> maps at model resolution (both fusions are linear: no special case)."""
        maps = self.head.finish(patch_map)
        return maps

    # ------------------------------------------------------------- scoring
    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor],
                 fusion: FusionStats | None = None) -> BatchScores:
        """``fusion``: reference statistics for normalized fusion (None: raw fusion)."""
        if self.refs is None:
            out = self.head(pixels, *text, bank=None)
            return BatchScores(out.scores.cpu(), out.global_scores.cpu(), out.maps.cpu(), out.keep_normal.cpu(),
                               out.keep_abnormal.cpu(), out.embeddings.cpu())
        head = self.head
        feats = encode(self.backbone, pixels, self.scorer.capture)
        ad = head.adapt(feats.g, *text)
        language = head.language_map(feats.g, head.local_embeddings(feats), ad.local_classes,
                                     global_scores=ad.global_scores).flatten(1) \
            if self.use_text else None
        visual = visual_map(self.scorer.tokens(feats.caps, feats.last), self.refs, self.covers())
        image = image_residual(self.scorer.image(feats.g), self.refs)
        patch, scores, normalized = fuse(language, ad.global_scores if self.use_text else None, visual, image,
                                         fusion if self.fusion == "normalized" else None)
        maps = self.finish(patch.view(-1, *head.grid), normalized)
        return BatchScores(scores.cpu(), ad.global_scores.cpu(), maps.cpu(), ad.keep_normal.cpu(),
                           ad.keep_abnormal.cpu(), feats.g.float().cpu())
