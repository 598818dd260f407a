"""ALFA zero-shot: run-time prompt adaptation + fine-grained aligner (docs/method.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy import ndimage

from ..model.backbone import ClipBackbone
from ..scoring.contextual import contextual_scores, keep_masks, masked_class_embeddings
from ..scoring.windows import harmonic_aggregation, harmonic_mean
from ..scoring.zero_shot import TEMPERATURE, anomaly_probability, image_score, rank_one_transfer
from .base import BatchScores, WindowGeometry, upsample

TEXT_PROJECTIONS = ("rank1", "none")


class AlfaMethod:
    name = "alfa"

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: tuple[int, ...] = (2, 3),
        temperature: float = TEMPERATURE,
        k: float = 1.0,
        sigma: float = 4.0,
        text_projection: str = "rank1",
    ) -> None:
        if text_projection not in TEXT_PROJECTIONS:
            raise ValueError(f"text_projection must be one of {TEXT_PROJECTIONS}")
        self.backbone = backbone
        self.geometry = WindowGeometry(backbone.grid, scales)
        self.temperature = temperature
        self.k = k
        self.sigma = sigma
        self.text_projection = text_projection

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-normalised prompt embeddings; the per-image selection happens in ``__call__``."""
        return F.normalize(normal.float(), dim=-1), F.normalize(abnormal.float(), dim=-1)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]) -> BatchScores:
        bb = self.backbone
        normal, abnormal = text
        z = bb.penultimate(bb.tokens(pixels))
        g, _ = bb.global_embedding(z)
        gn = F.normalize(g, dim=-1)
        # run-time prompt adaptation (eq. 2-4) and the class-token score (eq. 10)
        sc_n, sc_a = contextual_scores(gn @ normal.T, gn @ abnormal.T, self.k)
        keep_n, keep_a = keep_masks(sc_n, sc_a)
        classes = masked_class_embeddings(normal, abnormal, keep_n, keep_a)  # (B, 2, D)
        global_scores = anomaly_probability(g.unsqueeze(1), classes, self.temperature)[:, 0]
        # fine-grained aligner: local embeddings per window, eq. (11), harmonic aggregation
        per_scale = []
        for windows, cover in zip(self.geometry.windows, self.geometry.covers):
            local = bb.local_embeddings(z, windows)  # (B, n, D)
            if self.text_projection == "rank1":
                local_text = rank_one_transfer(g, local, classes)  # (B, n, 2, D)
            else:
                local_text = classes
            window_scores = anomaly_probability(local, local_text, self.temperature)
            per_scale.append(harmonic_aggregation(window_scores, cover).view(-1, *bb.grid))
        patch_map = harmonic_mean(torch.stack(per_scale), dim=0)  # (B, gh, gw)
        scores = image_score(global_scores, patch_map)  # eq. (12)
        maps = upsample(patch_map, bb.image_size)
        if self.sigma > 0:
            maps = torch.from_numpy(ndimage.gaussian_filter(maps.numpy(), sigma=(0, self.sigma, self.sigma)))
        return BatchScores(scores, global_scores, maps, keep_n, keep_a)
