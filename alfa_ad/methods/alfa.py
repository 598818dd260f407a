"""ALFA: run-time prompt adaptation + fine-grained aligner (docs/method.md),
with an optional few-shot memory bank of normal patch features."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from scipy import ndimage

from ..model.backbone import ClipBackbone
from ..scoring.contextual import contextual_scores, keep_masks, masked_class_embeddings
from ..scoring.memory import greedy_coreset, nearest_neighbour_distance
from ..scoring.windows import harmonic_aggregation, harmonic_mean
from ..scoring.zero_shot import TEMPERATURE, anomaly_probability, image_score, rank_one_transfer
from .base import BatchScores, WindowGeometry, upsample

TEXT_PROJECTIONS = ("rank1", "none")


def default_memory_layers(depth: int) -> tuple[int, ...]:
    """Blocks at 1/2 and 3/4 of the depth (0-based), e.g. (5, 8) for 12 blocks."""
    return tuple(sorted({max(0, min(depth - 2, depth * f // 4 - 1)) for f in (2, 3)}))


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
        memory_layers: Sequence[int] | None = None,
        use_text: bool = True,
    ) -> None:
        if text_projection not in TEXT_PROJECTIONS:
            raise ValueError(f"text_projection must be one of {TEXT_PROJECTIONS}")
        self.backbone = backbone
        self.geometry = WindowGeometry(backbone.grid, scales)
        self.temperature = temperature
        self.k = k
        self.sigma = sigma
        self.text_projection = text_projection
        self.memory_layers = tuple(memory_layers) if memory_layers is not None else default_memory_layers(backbone.depth)
        self.use_text = use_text
        self.bank: list[torch.Tensor] | None = None  # per memory layer: (M, W) normal patch features

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-normalised prompt embeddings; the per-image selection happens in ``__call__``."""
        device = self.backbone.device
        return F.normalize(normal.float(), dim=-1).to(device), F.normalize(abnormal.float(), dim=-1).to(device)

    # ------------------------------------------------------------- few-shot
    @torch.inference_mode()
    def extract_normals(self, batches: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per normal image, its patch features at each memory layer: ``[[(P, W), ...], ...]``."""
        bb = self.backbone
        out: list[list[torch.Tensor]] = []
        for pixels in batches:
            _, caps = bb.penultimate_with(bb.tokens(pixels), self.memory_layers)
            for i in range(pixels.shape[0]):
                out.append([c[i, 1:].float() for c in caps])
        return out

    def set_normals(self, features: Sequence[list[torch.Tensor]], coreset: int | None = None, seed: int = 0) -> None:
        """Memory bank from :meth:`extract_normals` output; ``coreset`` bounds each layer's bank."""
        if not features:
            raise ValueError("no normal reference image to build the memory bank from")
        bank = [torch.cat([f[layer] for f in features]) for layer in range(len(self.memory_layers))]
        if coreset is not None:
            bank = [b[greedy_coreset(b, coreset, seed).to(b.device)] for b in bank]
        self.bank = bank

    def fit_normals(self, batches: Iterable[torch.Tensor], coreset: int | None = None, seed: int = 0) -> None:
        """Memory bank of patch features (outputs of ``memory_layers``) of normal images."""
        self.set_normals(self.extract_normals(batches), coreset, seed)

    def clear_normals(self) -> None:
        self.bank = None

    def export_bank(self):
        """The fitted memory-bank state (opaque; for :meth:`import_bank`)."""
        return self.bank

    def import_bank(self, state) -> None:
        self.bank = state

    @property
    def bank_size(self) -> int:
        return 0 if self.bank is None else sum(b.shape[0] for b in self.bank)

    def _memory_map(self, caps: list[torch.Tensor]) -> torch.Tensor:
        """Mean over memory layers of each patch's nearest-neighbour distance: ``(B, gh, gw)``."""
        assert self.bank is not None
        maps = [nearest_neighbour_distance(c[:, 1:], b) for c, b in zip(caps, self.bank)]
        return torch.stack(maps).mean(0).view(-1, *self.backbone.grid)

    # ------------------------------------------------------------- scoring
    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]) -> BatchScores:
        bb = self.backbone
        normal, abnormal = text
        capture = self.memory_layers if self.bank is not None else ()
        z, caps = bb.penultimate_with(bb.tokens(pixels), capture)
        g, _ = bb.global_embedding(z)
        gn = F.normalize(g, dim=-1)
        # run-time prompt adaptation (eq. 2-4) and the class-token score (eq. 10)
        sc_n, sc_a = contextual_scores(gn @ normal.T, gn @ abnormal.T, self.k)
        keep_n, keep_a = keep_masks(sc_n, sc_a)
        classes = masked_class_embeddings(normal, abnormal, keep_n, keep_a)  # (B, 2, D)
        global_scores = anomaly_probability(g.unsqueeze(1), classes, self.temperature)[:, 0]
        if self.use_text:
            language = self._language_map(z, g, classes)
        if self.bank is None:
            if not self.use_text:
                raise ValueError("with use_text=False a memory bank of normal images is needed (fit_normals)")
            patch_map, scores = language, image_score(global_scores, language)  # eq. (12)
        else:
            visual = self._memory_map(caps)
            if self.use_text:
                patch_map = 0.5 * (language + visual)
                scores = image_score(global_scores, patch_map)
            else:
                patch_map, scores = visual, visual.flatten(1).amax(-1)
        maps = upsample(patch_map, bb.image_size)
        if self.sigma > 0:
            maps = torch.from_numpy(ndimage.gaussian_filter(maps.cpu().numpy(), sigma=(0, self.sigma, self.sigma)))
        return BatchScores(scores.cpu(), global_scores.cpu(), maps.cpu(), keep_n.cpu(), keep_a.cpu(), g.cpu())

    def _language_map(self, z: torch.Tensor, g: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Fine-grained aligner: local embeddings per window, eq. (11), harmonic aggregation
        per scale and harmonic average across scales: ``(B, gh, gw)``."""
        bb = self.backbone
        per_scale = []
        for windows, cover in zip(self.geometry.windows, self.geometry.covers):
            local = bb.local_embeddings(z, windows)  # (B, n, D)
            local_text = rank_one_transfer(g, local, classes) if self.text_projection == "rank1" else classes
            window_scores = anomaly_probability(local, local_text, self.temperature)
            per_scale.append(harmonic_aggregation(window_scores, cover).view(-1, *bb.grid))
        return harmonic_mean(torch.stack(per_scale), dim=0)
