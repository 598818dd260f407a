"""WinCLIP (Jeong et al., CVPR'23), zero-shot and few-shot (WinCLIP+): the baseline.

Class embeddings are the means of the raw prompt embeddings of the
compositional ensemble; window embeddings come from masked forward passes
(class token + window tokens through the whole vision transformer); window
scores are harmonically aggregated per patch, and the image score is added as
one more "scale" before the harmonic mean across scales, as in anomalib.
WinCLIP+ adds visual association scores against the reference images' patch
and window embeddings (docs/method.md section 6).
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..model.backbone import ClipBackbone
from ..scoring.memory import greedy_coreset, nearest_neighbour_distance
from ..scoring.windows import harmonic_aggregation, harmonic_mean
from ..scoring.zero_shot import TEMPERATURE, anomaly_probability
from .base import BatchScores, WindowGeometry, upsample


class WinClipMethod:
    name = "winclip"

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: tuple[int, ...] = (2, 3),
        temperature: float = TEMPERATURE,
        anomalib_compat: bool = False,
    ) -> None:
        self.backbone = backbone
        self.geometry = WindowGeometry(backbone.grid, scales)
        self.temperature = temperature
        self.anomalib_compat = anomalib_compat
        self.ref_patches: torch.Tensor | None = None  # (M, W) reference patch tokens
        self.ref_windows: list[torch.Tensor] | None = None  # per scale (M_s, D) reference window embeddings

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        """``(2, D)``: mean of the raw normal and of the raw abnormal prompt embeddings."""
        return torch.stack([normal.float().mean(0), abnormal.float().mean(0)]).to(self.backbone.device)

    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Image embeddings ``(B, D)``, window embeddings per scale ``(B, n, D)``, patch tokens ``(B, P, W)``."""
        bb = self.backbone
        tokens = bb.tokens(pixels)
        g, last = bb.global_embedding(bb.penultimate(tokens))
        windows = [bb.masked_window_embeddings(tokens, w, cross_window=self.anomalib_compat)
                   for w in self.geometry.windows]
        return g, windows, bb.patch_tokens(last)

    @torch.inference_mode()
    def extract_normals(self, batches: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Per normal image: its patch tokens ``(P, W)`` and window embeddings per scale ``(n, D)``."""
        out = []
        for pixels in batches:
            _, win, pt = self._encode(pixels)
            out += [(pt[i], [w[i] for w in win]) for i in range(pixels.shape[0])]
        return out

    def set_normals(self, features, coreset: int | None = None, seed: int = 0) -> None:
        """Reference embeddings from :meth:`extract_normals` output (WinCLIP+)."""
        if not features:
            raise ValueError("no normal reference image to build the memory bank from")
        ref_p = torch.cat([f[0] for f in features])
        ref_w = [torch.cat([f[1][s] for f in features]) for s in range(len(self.geometry.scales))]
        if coreset is not None:
            ref_p = ref_p[greedy_coreset(ref_p, coreset, seed).to(ref_p.device)]
            ref_w = [w[greedy_coreset(w, coreset, seed).to(w.device)] for w in ref_w]
        self.ref_patches, self.ref_windows = ref_p, ref_w

    def fit_normals(self, batches: Iterable[torch.Tensor], coreset: int | None = None, seed: int = 0) -> None:
        """Store the reference images' patch tokens and window embeddings (WinCLIP+)."""
        self.set_normals(self.extract_normals(batches), coreset, seed)

    def clear_normals(self) -> None:
        self.ref_patches = self.ref_windows = None

    def export_bank(self):
        """The fitted reference state (opaque; for :meth:`import_bank`)."""
        return (self.ref_patches, self.ref_windows)

    def import_bank(self, state) -> None:
        self.ref_patches, self.ref_windows = state

    @property
    def bank_size(self) -> int:
        if self.ref_patches is None:
            return 0
        return self.ref_patches.shape[0] + sum(w.shape[0] for w in self.ref_windows or [])

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: torch.Tensor) -> BatchScores:
        grid = self.backbone.grid
        g, windows, patches = self._encode(pixels)
        b = g.shape[0]
        global_scores = anomaly_probability(g.unsqueeze(1), text, self.temperature)[:, 0]
        per_scale = [global_scores.view(b, 1, 1).expand(b, *grid)]
        for emb, cover in zip(windows, self.geometry.covers):
            window_scores = anomaly_probability(emb, text, self.temperature)
            per_scale.append(harmonic_aggregation(window_scores, cover).view(b, *grid))
        patch_map = harmonic_mean(torch.stack(per_scale), dim=0)
        scores = global_scores
        if self.ref_patches is not None:
            few = [nearest_neighbour_distance(patches, self.ref_patches).view(b, *grid)]
            for emb, ref, cover in zip(windows, self.ref_windows, self.geometry.covers):
                few.append(harmonic_aggregation(nearest_neighbour_distance(emb, ref), cover).view(b, *grid))
            few_map = torch.stack(few).mean(0)
            patch_map = 0.5 * (patch_map + few_map)
            scores = 0.5 * (global_scores + few_map.flatten(1).amax(-1))
        maps = upsample(patch_map, self.backbone.image_size)
        return BatchScores(scores.cpu(), global_scores.cpu(), maps.cpu(), None, None, g.cpu())  # every prompt is used
