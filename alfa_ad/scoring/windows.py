"""Sliding windows on the patch grid and harmonic aggregation of window scores."""

from __future__ import annotations

import torch


def window_starts(length: int, size: int, stride: int = 1) -> list[int]:
    """Top-left offsets of ``size``-wide windows along a ``length``-long grid axis, every
    ``stride`` patches, plus one window flush with the far edge when the stride skips it,
    so every patch is covered whatever the stride."""
    if not 1 <= stride <= size:
        raise ValueError(f"window stride {stride} must be 1 to {size}, the window size: a longer stride "
                         "would leave patches between windows uncovered")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def make_window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Patch indices of every ``size x size`` window on a ``(H, W)`` patch grid, windows
    every ``stride`` patches (:func:`window_starts`: the far edges always covered).

    Returns ``(n_windows, size * size)`` long tensor of row-major patch indices,
    windows ordered row-major by their top-left corner.
    """
    h, w = grid
    if size < 1 or size > min(h, w):
        raise ValueError(f"window size {size} does not fit the {h}x{w} patch grid")
    idx = torch.arange(h * w).reshape(h, w)
    rows = torch.tensor(window_starts(h, size, stride))
    cols = torch.tensor(window_starts(w, size, stride))
    offsets = torch.arange(size)
    win = idx[(rows[:, None] + offsets)[:, None, :, None], (cols[:, None] + offsets)[None, :, None, :]]
    return win.reshape(-1, size * size)


def coverage_matrix(windows: torch.Tensor, n_patches: int) -> torch.Tensor:
    """``(n_patches, n_windows)`` 0/1 matrix: 1 where the window covers the patch."""
    cover = torch.zeros(n_patches, windows.shape[0])
    cover.scatter_(0, windows.T.contiguous(), 1.0)
    return cover


SCORE_FLOOR = 1e-12  # scores are floored here before reciprocals (float32 math): finite, exact-tie safe


def harmonic_aggregation(window_scores: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Harmonic mean, per patch, of the scores of the windows covering it.

    Scores are clamped to ``[SCORE_FLOOR, inf)`` first, so a window scoring exactly 0
    (an exact tie with a reference, say) or a rounding error just below 0 gives a
    patch value of at most ``SCORE_FLOOR``-scale instead of ``inf``/``nan``; the sum
    of reciprocals is a matrix product, so no ``0 * inf`` can occur.

    Args:
        window_scores: ``(B, n_windows)`` non-negative scores.
        cover: ``(n_patches, n_windows)`` coverage matrix from :func:`coverage_matrix`.

    Returns:
        ``(B, n_patches)``.  A patch no window covers gets 0.
    """
    cover = cover.to(window_scores.device, window_scores.dtype)
    inv = window_scores.clamp_min(SCORE_FLOOR).reciprocal() @ cover.T  # (B, P)
    count = cover.sum(-1)  # (P,)
    return torch.where(count > 0, count / inv.clamp_min(SCORE_FLOOR), torch.zeros_like(inv))


def harmonic_mean(maps: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Harmonic mean along ``dim`` (used across scales), with the same floor as
    :func:`harmonic_aggregation`."""
    return maps.shape[dim] / maps.clamp_min(SCORE_FLOOR).reciprocal().sum(dim)
