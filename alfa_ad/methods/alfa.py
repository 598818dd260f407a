"""ALFA: run-time prompt adaptation + fine-grained aligner (docs/method.md), with an
optional few-shot memory bank of normal patch features.

The per-image math is :class:`~alfa_ad.methods.alfa_head.AlfaHead` (a torch module);
this class holds it, the prompt embeddings' preparation and the memory bank, and hands
:class:`~alfa_ad.methods.base.BatchScores` on the CPU to the detector.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..aligners import TEXT_PROJECTIONS, build_aligner
from ..model.backbone import ClipBackbone
from ..registry import DEFAULT_ALIGNER
from ..scoring.memory import greedy_coreset
from ..scoring.zero_shot import TEMPERATURE
from .alfa_head import AlfaHead
from .base import BatchScores

__all__ = ["AlfaMethod", "TEXT_PROJECTIONS", "default_memory_layers"]


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
        text_projection: str | None = None,
        memory_layers: Sequence[int] | None = None,
        use_text: bool = True,
        aligner: str = DEFAULT_ALIGNER,
        contextual: bool = True,
    ) -> None:
        if text_projection is not None and text_projection not in TEXT_PROJECTIONS:
            raise ValueError(f"text_projection must be one of {TEXT_PROJECTIONS}")
        self.backbone = backbone
        memory_layers = tuple(memory_layers) if memory_layers is not None else default_memory_layers(backbone.depth)
        self.head = AlfaHead(build_aligner(aligner, backbone, text_projection=text_projection), backbone.grid,
                             backbone.image_size, scales, temperature, k, sigma, contextual, use_text,
                             memory_layers).to(backbone.device)
        self.bank: list[torch.Tensor] | None = None  # per memory layer: (M, W) normal patch features

    # options as attributes (what tests and reports read)
    @property
    def aligner(self):
        return self.head.aligner

    @property
    def text_projection(self) -> str:
        return self.head.aligner.text_projection

    @property
    def memory_layers(self) -> tuple[int, ...]:
        return self.head.memory_layers

    @property
    def use_text(self) -> bool:
        return self.head.use_text

    @property
    def scales(self) -> tuple[int, ...]:
        return self.head.scales

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-normalised prompt embeddings; the per-image selection happens in the head."""
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

    # ------------------------------------------------------------- scoring
    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor]) -> BatchScores:
        out = self.head(pixels, *text, bank=self.bank)
        return BatchScores(out.scores.cpu(), out.global_scores.cpu(), out.maps.cpu(), out.keep_normal.cpu(),
                           out.keep_abnormal.cpu(), out.embeddings.cpu())
