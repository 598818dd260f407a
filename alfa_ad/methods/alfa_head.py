"""ALFA's per-image math as one torch module: pixels (and prompt embeddings) in, a
NamedTuple out.  No per-image Python loop and no host synchronisation inside
``forward``, so ``.to()``, ``.half()`` and export see the whole computation.

The pieces are methods so that ``alfa-ad ablate`` can reuse an image's forward pass
(:meth:`AlfaHead.encode`) and each aligner's local embeddings across configurations:
``forward`` = ``encode`` -> ``adapt`` (eq. 2-4, 10) -> ``local_embeddings`` ->
``language_map`` (eq. 11, harmonic aggregation) -> few-shot fusion -> ``finish``
(upsampling, smoothing) -> eq. (12).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..aligners.base import Aligner, Features, encode
from ..scoring.contextual import (DEFAULT_PLACEMENT, contextual_scores, keep_masks, masked_class_embeddings,
                                  parse_placement, soft_weights)
from ..scoring.memory import nearest_neighbour_distance
from ..scoring.smoothing import GaussianBlur
from ..scoring.windows import harmonic_aggregation, harmonic_mean
from ..scoring.zero_shot import TEMPERATURE, anomaly_probability, image_score
from .base import WindowGeometry, upsample


class AlfaOutput(NamedTuple):
    scores: torch.Tensor  # (B,) eq. (12) or its few-shot form
    global_scores: torch.Tensor  # (B,) S_G, eq. (10)
    maps: torch.Tensor  # (B, H, W) at the model's input resolution
    keep_normal: torch.Tensor  # (B, N+) bool, prompts kept by eq. (4)
    keep_abnormal: torch.Tensor  # (B, N-) bool
    embeddings: torch.Tensor  # (B, D) f(x)
    patch_map: torch.Tensor  # (B, gh, gw) the map before upsampling (its max enters eq. 12)


class Adapted(NamedTuple):
    keep_normal: torch.Tensor
    keep_abnormal: torch.Tensor
    classes: torch.Tensor  # (B, 2, D) unit class embeddings of the image-level score (eq. 10)
    global_scores: torch.Tensor  # (B,)
    local_classes: torch.Tensor  # (B, 2, D) or (2, D): the class embeddings the windows meet (eq. 11)


class AlfaHead(nn.Module):
    """Zero-shot ALFA (and the memory-bank fusion of few-shot ALFA) for a batch of images.

    Args:
        aligner: the fine-grained aligner (:mod:`alfa_ad.aligners`); a submodule.
        scales: window sizes in patches.
        contextual: where eq. (4)'s prompt selection applies (:data:`~alfa_ad.scoring.contextual.PLACEMENTS`:
            ``global``, ``all``, ``soft``, ``off``; ``True``/``False`` mean ``all``/``off``).
        memory_layers: blocks whose patch tokens the few-shot memory bank holds.
        global_in_map: the image-level score enters the map's harmonic mean across scales as one
            more scale (WinCLIP's global-local fusion; docs/method.md section 4).
    """

    def __init__(self, aligner: Aligner, grid: tuple[int, int], image_size: tuple[int, int],
                 scales: Sequence[int] = (2, 3), temperature: float = TEMPERATURE, k: float = 1.0,
                 sigma: float = 4.0, contextual: str | bool = DEFAULT_PLACEMENT, use_text: bool = True,
                 memory_layers: Sequence[int] = (), global_in_map: bool = True,
                 strides: Sequence[int] | None = None) -> None:
        super().__init__()
        self.aligner = aligner
        self.grid = tuple(grid)
        self.image_size = tuple(image_size)
        self.scales = tuple(scales)
        self.temperature = temperature
        self.k = k
        self.contextual = parse_placement(contextual)
        self.use_text = use_text
        self.global_in_map = bool(global_in_map)
        self.memory_layers = tuple(memory_layers)
        self.blur = GaussianBlur(sigma)
        geometry = WindowGeometry(self.grid, self.scales, strides)
        self.strides = geometry.strides
        for i, (w, c) in enumerate(zip(geometry.windows, geometry.covers)):
            self.register_buffer(f"windows_{i}", w, persistent=False)
            self.register_buffer(f"cover_{i}", c, persistent=False)

    def geometry(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale: window patch indices ``(n, s*s)`` and coverage matrix ``(P, n)``."""
        return [(getattr(self, f"windows_{i}"), getattr(self, f"cover_{i}")) for i in range(len(self.scales))]

    # ------------------------------------------------------------- pieces
    def encode(self, pixels: torch.Tensor, capture: bool = False) -> Features:
        return encode(self.aligner.backbone, pixels, self.memory_layers if capture else ())

    def adapt(self, g: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor,
              contextual: Optional[str | bool] = None) -> Adapted:
        """Run-time prompt adaptation (eq. 2-4), the class-token score (eq. 10) and the class
        embeddings the windows meet, for the placement ``contextual`` (default: the head's)."""
        placement = self.contextual if contextual is None else parse_placement(contextual)
        gn = torch.nn.functional.normalize(g.float(), dim=-1)
        every_n = torch.ones(g.shape[0], normal.shape[0], dtype=torch.bool, device=g.device)
        every_a = torch.ones(g.shape[0], abnormal.shape[0], dtype=torch.bool, device=g.device)
        every = masked_class_embeddings(normal, abnormal, every_n, every_a)
        if placement == "off":
            keep_n, keep_a, classes = every_n, every_a, every
        else:
            score_n, score_a = contextual_scores(gn @ normal.T, gn @ abnormal.T, self.k)
            keep_n, keep_a = keep_masks(score_n, score_a)
            if placement == "soft":
                classes = masked_class_embeddings(normal, abnormal, soft_weights(score_n), soft_weights(score_a))
            else:
                classes = masked_class_embeddings(normal, abnormal, keep_n, keep_a)
        global_scores = anomaly_probability(g.float().unsqueeze(1), classes, self.temperature)[:, 0]
        return Adapted(keep_n, keep_a, classes, global_scores, classes if placement == "all" else every)

    def local_embeddings(self, features: Features) -> list[torch.Tensor]:
        """The aligner's local embeddings ``(B, n_s, D)`` for each scale."""
        state = self.aligner.prepare(features)
        return self.aligner.window_embeddings(features, state, [windows for windows, _ in self.geometry()])

    def window_map(self, g: torch.Tensor, local: torch.Tensor, classes: torch.Tensor, cover: torch.Tensor,
                   projection: Optional[str] = None) -> torch.Tensor:
        """Eq. (11) for every window of one scale, harmonically aggregated per patch: ``(B, gh, gw)``."""
        text = self.aligner.project_text(g.float(), local, classes, projection)
        window_scores = anomaly_probability(local, text, self.temperature)
        return harmonic_aggregation(window_scores, cover).view(-1, *self.grid)

    def language_map(self, g: torch.Tensor, locals_: Sequence[torch.Tensor], classes: torch.Tensor,
                     projection: Optional[str] = None, global_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Harmonic average across scales of the per-scale maps: ``S~_L``, ``(B, gh, gw)``; with
        ``global_in_map``, ``global_scores`` ``(B,)`` broadcast to the grid is one more term."""
        maps = [self.window_map(g, loc, classes, cover, projection)
                for loc, (_, cover) in zip(locals_, self.geometry())]
        if self.global_in_map:
            if global_scores is None:
                raise ValueError("global_in_map needs the image-level scores")
            maps.append(global_scores.view(-1, 1, 1).expand_as(maps[0]))
        return harmonic_mean(torch.stack(maps), dim=0)

    def memory_map(self, caps: Sequence[torch.Tensor], bank: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean over memory layers of each patch's nearest-neighbour distance: ``(B, gh, gw)``."""
        maps = [nearest_neighbour_distance(c[:, 1:], b) for c, b in zip(caps, bank)]
        return torch.stack(maps).mean(0).view(-1, *self.grid)

    def finish(self, patch_map: torch.Tensor) -> torch.Tensor:
        """Upsampling to the model resolution and Gaussian smoothing."""
        return self.blur(upsample(patch_map, self.image_size))

    # ------------------------------------------------------------- forward
    def forward(self, pixels: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor,
                bank: Optional[list[torch.Tensor]] = None) -> AlfaOutput:
        """``normal (N+, D)``, ``abnormal (N-, D)``: unit prompt embeddings; ``bank``: per memory
        layer ``(M, W)`` normal patch features (few-shot) or None."""
        feats = self.encode(pixels, capture=bank is not None)
        ad = self.adapt(feats.g, normal, abnormal)
        language = None
        if self.use_text:
            language = self.language_map(feats.g, self.local_embeddings(feats), ad.local_classes,
                                         global_scores=ad.global_scores)
        if bank is None:
            if language is None:
                raise ValueError("with use_text=False a memory bank of normal images is needed (fit_normals)")
            patch_map, scores = language, image_score(ad.global_scores, language)  # eq. (12)
        else:
            visual = self.memory_map(feats.caps, bank)
            if language is not None:
                patch_map = 0.5 * (language + visual)
                scores = image_score(ad.global_scores, patch_map)
            else:
                patch_map, scores = visual, visual.flatten(1).amax(-1)
        return AlfaOutput(scores, ad.global_scores, self.finish(patch_map), ad.keep_normal, ad.keep_abnormal,
                          feats.g, patch_map)
