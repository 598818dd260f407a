"""WinCLIP (Jeong et al., CVPR'23), zero-shot and few-shot (WinCLIP+): the baseline.

Class embeddings are the means of the raw prompt embeddings of the
compositional ensemble; window embeddings come from masked forward passes
(class token + window tokens through the whole vision transformer: the ``masked``
aligner, WinCLIP's definition; another aligner's window embeddings can be used
instead, compared with the class embeddings without text projection); window
scores are harmonically aggregated per patch, and the image score is added as
one more "scale" before the harmonic mean across scales, as in anomalib.
WinCLIP+ adds visual association scores against the reference images' patch
and window embeddings (docs/method.md section 6).
"""

from __future__ import annotations

from typing import Collection, Iterable

import torch

from ..aligners import build_aligner, encode
from ..model.backbone import ClipBackbone
from ..scoring.fewshot import image_residual, visual_map
from ..scoring.fusion import FusionStats, fuse
from ..scoring.windows import harmonic_aggregation, harmonic_mean
from ..scoring.zero_shot import TEMPERATURE, anomaly_probability
from .base import BatchScores, ReferenceBank, WindowGeometry, ZeroShotFeatures, extract_references, upsample


class WinClipMethod(ReferenceBank):
    name = "winclip"
    peak_of_visual = True  # anomalib: the image score takes the few-shot map's maximum

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: tuple[int, ...] = (2, 3),
        temperature: float = TEMPERATURE,
        anomalib_compat: bool = False,
        aligner: str = "masked",
        few_shot_scorer: str = "bank",
        fusion: str = "raw",
        memory_layers=None,
        contextual: str | None = None,
        window_strides: tuple[int, ...] | None = None,
    ) -> None:
        if contextual not in (None, "off"):
            raise ValueError(f"contextual {contextual!r}: WinCLIP has no run-time prompt adaptation (eq. 4 is ALFA's)")
        self.contextual = "off"
        self.scales = tuple(scales)
        if anomalib_compat and aligner != "masked":
            raise ValueError("anomalib_compat reproduces anomalib's masked windows; it needs aligner 'masked'")
        self.backbone = backbone
        options = {"cross_window": True} if anomalib_compat else {}
        self.aligner = build_aligner(aligner, backbone, text_projection="none", **options)
        self.geometry = WindowGeometry(backbone.grid, scales, window_strides)
        self.window_strides = self.geometry.strides
        if anomalib_compat and set(self.window_strides) != {1}:
            raise ValueError("anomalib_compat reproduces anomalib's windows at stride 1; leave window_strides out")
        self.temperature = temperature
        self.anomalib_compat = anomalib_compat
        # bank: WinCLIP+'s reference patch tokens and window embeddings; residual: InCTRL-style
        self._init_bank(backbone, few_shot_scorer, memory_layers, fusion, windows=True)

    @classmethod
    def default_prompt_sources(cls, config) -> tuple[str, ...]:
        """WinCLIP's compositional ensemble (anomalib's template list under ``anomalib_compat``)."""
        return ("winclip",)

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        """``(2, D)``: mean of the raw normal and of the raw abnormal prompt embeddings."""
        return torch.stack([normal.float().mean(0), abnormal.float().mean(0)]).to(self.backbone.device)

    def window_features(self, pixels: torch.Tensor, capture=()):
        """Image embeddings ``(B, D)``, window embeddings per scale ``(B, n, D)``, the forward pass."""
        feats = encode(self.backbone, pixels, capture)
        state = self.aligner.prepare(feats)
        windows = self.aligner.window_embeddings(feats, state, self.geometry.windows)
        return feats.g, windows, feats

    def covers(self) -> list:
        if self.scorer.name == "bank":
            return [None] + list(self.geometry.covers)
        return [None] * len(self.scorer.layers)

    # ------------------------------------------------------------- few-shot
    @torch.inference_mode()
    def extract_normals(self, batches: Iterable[torch.Tensor], keep: Collection[int] = ()):
        """Per normal unit (image or tile): the scorer's token sets and image embedding; and the
        zero-shot features of the units in ``keep`` (:func:`~alfa_ad.methods.base.extract_references`)."""

        def reference_pass(pixels, rows):
            g, win, feats = self.window_features(pixels, self.scorer.capture)
            zero_shot = ZeroShotFeatures(g, win).select(rows) if rows else None
            return self.scorer.tokens(feats.caps, feats.last, win), self.scorer.image(g), zero_shot

        return extract_references(batches, reference_pass, keep)

    @property
    def ref_patches(self) -> torch.Tensor | None:
        return None if self.refs is None or self.scorer.name != "bank" else self.refs.sets[0]

    @property
    def ref_windows(self) -> list[torch.Tensor] | None:
        return None if self.refs is None or self.scorer.name != "bank" else self.refs.sets[1:]

    def _zero_shot(self, g, windows, text):
        grid, b = self.backbone.grid, g.shape[0]
        global_scores = anomaly_probability(g.unsqueeze(1), text, self.temperature)[:, 0]
        per_scale = [global_scores.view(b, 1, 1).expand(b, *grid)]
        for emb, cover in zip(windows, self.geometry.covers):
            window_scores = anomaly_probability(emb, text, self.temperature)
            per_scale.append(harmonic_aggregation(window_scores, cover).view(b, *grid))
        return harmonic_mean(torch.stack(per_scale), dim=0), global_scores

    @torch.inference_mode()
    def zero_shot_scores(self, features: ZeroShotFeatures, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot map ``(B, P)`` and class-token score ``(B,)`` of zero-shot features."""
        patch_map, global_scores = self._zero_shot(features.g, features.local, text)
        return patch_map.flatten(1), global_scores

    def finish(self, patch_map: torch.Tensor, normalized: bool) -> torch.Tensor:
        maps = upsample(patch_map, self.backbone.image_size)
        return maps

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: torch.Tensor, fusion: FusionStats | None = None) -> BatchScores:
        grid = self.backbone.grid
        g, windows, feats = self.window_features(pixels, self.scorer.capture if self.refs is not None else ())
        patch_map, global_scores = self._zero_shot(g, windows, text)
        scores, normalized = global_scores, False
        if self.refs is not None:
            visual = visual_map(self.scorer.tokens(feats.caps, feats.last, windows), self.refs, self.covers())
            image = image_residual(self.scorer.image(g), self.refs)
            patch, scores, normalized = fuse(patch_map.flatten(1), global_scores, visual, image,
                                             fusion if self.fusion == "normalized" else None, peak_of_visual=True)
            patch_map = patch.view(-1, *grid)
        maps = self.finish(patch_map, normalized)
        return BatchScores(scores.cpu(), global_scores.cpu(), maps.cpu(), None, None, g.cpu())  # every prompt is used
