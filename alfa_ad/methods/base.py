"""What both methods share: window geometry, output container, map resizing, and the
reference pass of few-shot fitting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..scoring.windows import coverage_matrix, make_window_indices


@dataclass
class BatchScores:
    """Scores for a batch at model resolution."""

    scores: torch.Tensor  # (B,) image anomaly scores in [0, 1]
    global_scores: torch.Tensor  # (B,) class-token scores (eq. 10)
    maps: torch.Tensor  # (B, h, w) anomaly maps at the model's input resolution
    kept_normal: torch.Tensor | None  # (B, N+) bool: prompts kept per image; None = all
    kept_abnormal: torch.Tensor | None  # (B, N-) bool; None = all
    embeddings: torch.Tensor | None = None  # (B, D) global image embeddings


class WindowGeometry:
    """Sliding windows (stride 1) of each scale on the patch grid, with coverage matrices."""

    def __init__(self, grid: tuple[int, int], scales: tuple[int, ...]) -> None:
        if not scales:
            raise ValueError("at least one window scale is needed")
        self.grid = grid
        self.scales = tuple(scales)
        self.windows = [make_window_indices(grid, s) for s in self.scales]
        n = grid[0] * grid[1]
        self.covers = [coverage_matrix(w, n) for w in self.windows]


def upsample(patch_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear ``(B, gh, gw) -> (B, H, W)`` (align_corners=False)."""
    return F.interpolate(patch_maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


class ZeroShotFeatures(NamedTuple):
    """The class-independent half of a zero-shot pass: what the prompts are compared with.

    ``g``: ``(B, D)`` global embeddings f(x); ``local``: per window scale the aligner's
    window embeddings ``(B, n_s, D)``.  Kept for the leave-one-out references at fit time
    (about 0.9 MB per image for ViT-B-16-plus-240 at scales 2 and 3), so calibration and
    normalized fusion score them for any class without running the model again.
    """

    g: torch.Tensor
    local: list[torch.Tensor]

    def select(self, rows) -> "ZeroShotFeatures":
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.g.device)
        return ZeroShotFeatures(self.g[rows], [w[rows] for w in self.local])

    def to(self, device) -> "ZeroShotFeatures":
        return ZeroShotFeatures(self.g.to(device), [w.to(device) for w in self.local])

    @property
    def count(self) -> int:
        """How many images (or tiles) these are the features of."""
        return self.g.shape[0]

    @staticmethod
    def cat(parts: Sequence["ZeroShotFeatures"]) -> "ZeroShotFeatures":
        return ZeroShotFeatures(torch.cat([p.g for p in parts]),
                                [torch.cat(ws) for ws in zip(*(p.local for p in parts))])


def extract_references(batches: Iterable[torch.Tensor], reference_pass: Callable, keep: Collection[int] = ()):
    """Per normal unit (image or tile) its few-shot token sets and image embedding, and the
    :class:`ZeroShotFeatures` of the units numbered in ``keep`` (in unit order; None when
    none is kept or the method has no text part).

    ``reference_pass(pixels, rows)`` runs one batch: token sets ``[(B, ...)]``, image
    embeddings ``(B, D)`` or None, and the zero-shot features of the batch rows ``rows``
    (from the same forward pass) or None.
    """
    units, kept, start = [], [], 0
    for pixels in batches:
        b = pixels.shape[0]
        rows = [i for i in range(b) if start + i in keep]
        tokens, image, zero_shot = reference_pass(pixels, rows)
        units += [([t[i] for t in tokens], None if image is None else image[i]) for i in range(b)]
        if rows and zero_shot is not None:
            kept.append(zero_shot.to("cpu"))
        start += b
    return units, (ZeroShotFeatures.cat(kept) if kept else None)
