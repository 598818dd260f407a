"""What both methods share: window geometry, output container, map resizing."""

from __future__ import annotations

from dataclasses import dataclass

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
