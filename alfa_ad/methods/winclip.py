"""WinCLIP zero-shot (Jeong et al., CVPR'23), the baseline.

Class embeddings are the means of the raw prompt embeddings of the
compositional ensemble; window embeddings come from masked forward passes
(class token + window tokens through the whole vision transformer); window
scores are harmonically aggregated per patch, and the image score is added as
one more "scale" before the harmonic mean across scales, as in anomalib.
"""

from __future__ import annotations

import torch

from ..model.backbone import ClipBackbone
from ..scoring.windows import harmonic_aggregation, harmonic_mean
from ..scoring.zero_shot import TEMPERATURE, anomaly_probability
from .base import BatchScores, WindowGeometry, upsample


class WinClipMethod:
    name = "winclip"

    def __init__(self, backbone: ClipBackbone, scales: tuple[int, ...] = (2, 3), temperature: float = TEMPERATURE) -> None:
        self.backbone = backbone
        self.geometry = WindowGeometry(backbone.grid, scales)
        self.temperature = temperature

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        """``(2, D)``: mean of the raw normal and of the raw abnormal prompt embeddings."""
        return torch.stack([normal.float().mean(0), abnormal.float().mean(0)])

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: torch.Tensor) -> BatchScores:
        bb = self.backbone
        tokens = bb.tokens(pixels)
        g, _ = bb.global_embedding(bb.penultimate(tokens))
        b = g.shape[0]
        global_scores = anomaly_probability(g.unsqueeze(1), text, self.temperature)[:, 0]
        per_scale = [global_scores.view(b, 1, 1).expand(b, *bb.grid)]
        for windows, cover in zip(self.geometry.windows, self.geometry.covers):
            window_scores = anomaly_probability(bb.masked_window_embeddings(tokens, windows), text, self.temperature)
            per_scale.append(harmonic_aggregation(window_scores, cover).view(b, *bb.grid))
        patch_map = harmonic_mean(torch.stack(per_scale), dim=0)
        maps = upsample(patch_map, bb.image_size)
        return BatchScores(global_scores, global_scores, maps, None, None)  # every prompt is used
