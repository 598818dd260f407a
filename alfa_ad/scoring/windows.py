"""Sliding windows on the patch grid and harmonic aggregation of window scores."""

from __future__ import annotations

import torch


def make_window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Patch indices of every ``size x size`` window on a ``(H, W)`` patch grid.

    Returns ``(n_windows, size * size)`` long tensor of row-major patch indices,
    windows ordered row-major by their top-left corner.
    """
    h, w = grid
    if size < 1 or size > min(h, w):
        raise ValueError(f"window size {size} does not fit the {h}x{w} patch grid")
    idx = torch.arange(h * w).reshape(h, w)
    win = idx.unfold(0, size, stride).unfold(1, size, stride)  # (nh, nw, size, size)
    return win.reshape(-1, size * size)


def coverage_matrix(windows: torch.Tensor, n_patches: int) -> torch.Tensor:
    """``(n_patches, n_windows)`` 0/1 matrix: 1 where the window covers the patch."""
    cover = torch.zeros(n_patches, windows.shape[0])
    cover.scatter_(0, windows.T.contiguous(), 1.0)
    return cover


def harmonic_aggregation(window_scores: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Harmonic mean, per patch, of the scores of the windows covering it.

    Args:
        window_scores: ``(B, n_windows)`` positive scores.
        cover: ``(n_patches, n_windows)`` coverage matrix from :func:`coverage_matrix`.

    Returns:
        ``(B, n_patches)``.  A patch no window covers gets 0.
    """
    covered = cover.to(window_scores.device).bool()  # (P, n)
    # masked sum of reciprocals: a zero score makes its patches 0 without 0 * inf = nan elsewhere
    inv = torch.where(covered, (1.0 / window_scores).unsqueeze(1), torch.zeros((), dtype=window_scores.dtype)).sum(-1)
    count = covered.sum(-1).to(window_scores.dtype)  # (P,)
    out = count / inv
    return torch.where(count > 0, out, torch.zeros_like(out))


def harmonic_mean(maps: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Harmonic mean along ``dim`` (used across scales)."""
    return maps.shape[dim] / (1.0 / maps).sum(dim)
