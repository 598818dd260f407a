"""Few-shot memory bank math: nearest-neighbour distances and coreset subsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_neighbour_distance(query: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Cosine distance of each query feature to its nearest bank feature, halved to [0, 1].

    ``(1 - max_m cos(q, b_m)) / 2`` (WinCLIP's visual association score, eq. 4 of
    WinCLIP), computed with batched matrix products and clamped to [0, 1]: rounding
    makes ``cos`` of identical vectors come out a few ulp above 1, which must not turn
    into a negative distance.

    Args:
        query: ``(..., d)`` features.  bank: ``(M, d)`` features (any norm).

    Returns:
        ``query.shape[:-1]`` distances.
    """
    shape = query.shape[:-1]
    q = F.normalize(query.reshape(-1, query.shape[-1]).float(), dim=-1)
    b = F.normalize(bank.float(), dim=-1).to(q.device)
    best = torch.full((q.shape[0],), -2.0, device=q.device)
    for s in range(0, b.shape[0], chunk):
        best = torch.maximum(best, (q @ b[s : s + chunk].T).amax(-1))
    return ((1.0 - best) / 2.0).clamp(0.0, 1.0).reshape(shape)


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """Indices of a greedy k-center coreset (PatchCore), on a random projection.

    Starts from a seeded random point, then repeatedly adds the point farthest
    from the current selection (Euclidean distance after a Johnson-Lindenstrauss
    projection to ``proj_dim`` dimensions).  Returns ``min(size, N)`` indices.
    """
    n = features.shape[0]
    if size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError("coreset size must be at least 1")
    gen = torch.Generator().manual_seed(seed)
    x = features.float().cpu()
    if x.shape[1] > proj_dim:
        x = x @ (torch.randn(x.shape[1], proj_dim, generator=gen) / proj_dim**0.5)
    first = int(torch.randint(n, (1,), generator=gen))
    chosen = [first]
    dist = (x - x[first]).pow(2).sum(-1)
    for _ in range(size - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (x - x[nxt]).pow(2).sum(-1))
    return torch.tensor(chosen)
