"""Mutual scoring of unlabeled images (MuSc, ICLR 2024; docs/method.md, "musc").

Pure tensor math, no model:

* :func:`musc_layers` -- the blocks whose patch tokens are read (a quarter, half,
  three quarters and all of the depth);
* :func:`normalize_layer` -- one layer norm over an image's whole feature map (no affine);
* :func:`aggregate_neighbourhood` -- LNAMD: each patch feature replaced by the mean of its
  ``r x r`` neighbourhood (zero padding counted, so border patches shrink towards 0 as in
  the paper's code), then unit length;
* :func:`mutual_scores` -- MSM: a patch's distance to every *other* image is its distance
  to that image's nearest patch; its score is the mean of the smallest ``[low, high)``
  fraction of those distances (the "interval average");
* :func:`rescore_images` -- RsCIN: image scores smoothed over each image's ``k`` most
  similar images (image-embedding cosine), averaged over several ``k``;
* :func:`rescore_with_pool` -- the same for images scored against a fixed pool: each
  image among itself and the pool only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def musc_layers(depth: int) -> tuple[int, ...]:
    """0-based blocks at 1/4, 2/4, 3/4 and 4/4 of the depth, e.g. (2, 5, 8, 11) for 12
    blocks (MuSc reads blocks 6, 12, 18 and 24 of ViT-L/14's 24, 1-based)."""
    return tuple(sorted({max(0, depth * k // 4 - 1) for k in (1, 2, 3, 4)}))


def normalize_layer(tokens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(B, P, C)`` -> the same, each image's ``P x C`` values standardised together (a
    layer norm over the whole ``(C, h, w)`` map, no learned scale or shift)."""
    x = tokens.float()
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(-1, keepdim=True)
    var = flat.var(-1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var + eps)).reshape(x.shape)


def aggregate_neighbourhood(tokens: torch.Tensor, grid: tuple[int, int], degree: int) -> torch.Tensor:
    """``(B, P, C)`` patch features on a ``grid`` -> ``(B, P, C)`` unit vectors, each the mean
    of its ``degree x degree`` neighbourhood (odd ``degree``; 1: the patch itself)."""
    if degree < 1 or degree % 2 == 0:
        raise ValueError(f"aggregation degree must be an odd number >= 1, got {degree}")
    b, p, c = tokens.shape
    h, w = grid
    if p != h * w:
        raise ValueError(f"{p} patch tokens do not fill a {h}x{w} grid")
    x = tokens.float()
    if degree > 1:
        maps = x.transpose(1, 2).reshape(b, c, h, w)
        maps = F.avg_pool2d(maps, degree, stride=1, padding=degree // 2, count_include_pad=True)
        x = maps.reshape(b, c, p).transpose(1, 2)
    return F.normalize(x, dim=-1)


DISTANCE_BUDGET = 256 * 2**20  # bytes of float32 patch distances held at once by mutual_scores


def interval_bounds(others: int, low: float, high: float) -> tuple[int, int]:
    """Which of ``others`` ascending distances the interval average keeps: ``[lo, hi)``,
    ``hi = max(1, floor(high * others))``, ``lo = min(floor(low * others), hi - 1)``."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"interval must satisfy 0 <= low < high <= 1, got [{low}, {high})")
    hi = max(1, math.floor(high * others))
    return min(math.floor(low * others), hi - 1), hi


def mutual_scores(features: torch.Tensor, low: float = 0.0, high: float = 0.3,
                  pool: torch.Tensor | None = None, chunk: int | None = None, pool_only: bool = False) -> torch.Tensor:
    """MSM: ``(N, P, C)`` unit features of N images scored by each other -> ``(N, P)``.

    For patch ``p`` of image ``i`` and every image ``j != i``: ``d_j = min_q |z_ip - z_jq|``
    (Euclidean); the score is the mean of the ascending ``d_j`` in the
    :func:`interval_bounds` window.  ``pool``: ``(R, P', C)`` more images that score but
    are not scored (e.g. normal references), with as many patches as the images;
    ``pool_only``: the pool alone scores (the images do not score each other: a service's
    uploads against a fixed pool).  ``chunk`` images are scored at a time, so the distances
    held are ``chunk x P x (N + R) x P``, not ``N x P x (N + R) x P``; by default as many as
    keep that under :data:`DISTANCE_BUDGET` bytes (at least one: 16 for a 15 x 15 grid and 64
    images, 1 for DINOv2's 32 x 32 at 448 px).
    """
    n, p, c = features.shape
    if pool_only and pool is None:
        raise ValueError("pool_only needs a pool")
    scorers = features if pool is None else pool.to(features) if pool_only else torch.cat([features, pool.to(features)], 0)
    others = scorers.shape[0] - (0 if pool_only else 1)
    if others < 1:
        raise ValueError("mutual scoring needs at least 2 images scored together")
    lo, hi = interval_bounds(others, low, high)
    flat = scorers.reshape(-1, c)
    if chunk is None:
        chunk = max(1, min(16, DISTANCE_BUDGET // (4 * p * flat.shape[0])))
    out = torch.empty(n, p, dtype=torch.float32, device=features.device)
    for start in range(0, n, chunk):
        q = features[start:start + chunk].float()  # (b, P, C)
        d = torch.cdist(q.reshape(-1, c), flat.float(), compute_mode="use_mm_for_euclid_dist")  # (b*P, M*P')
        d = d.reshape(q.shape[0], p, scorers.shape[0], -1).amin(-1)  # (b, P, M): nearest patch per image
        if not pool_only:
            rows = torch.arange(q.shape[0], device=d.device)
            d[rows, :, start + rows] = float("inf")  # an image never scores itself
        d = d.topk(hi, dim=-1, largest=False).values[..., lo:hi]  # the hi smallest, ascending
        out[start:start + q.shape[0]] = d.mean(-1)
    return out


def rescore_images(scores: torch.Tensor, embeddings: torch.Tensor, ks: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """RsCIN: ``(N,)`` image scores and ``(N, D)`` image embeddings -> ``(N,)``.

    For each ``k`` (capped at N), each image's new score is the similarity-weighted mean of
    the scores of its ``k`` most similar images (cosine of the embeddings; itself included,
    as its own most similar), and the results for the ``ks`` are averaged.  ``k = 1``
    alone returns the scores.  The paper's code first min-max normalises the scores over
    the images; that is an increasing affine map, so it changes no ranking within the
    images, but it would put every group of a class on its own scale (a group of normal
    images spread over [0, 1]): it is left out, and scores in [0, 1] stay in [0, 1].
    """
    s = scores.float()
    if not ks:
        return s
    e = F.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    out = torch.zeros_like(s)
    for k in ks:
        if k < 1:
            raise ValueError(f"re-scoring neighbourhood sizes must be >= 1, got {k}")
        k = min(k, s.shape[0])
        top = sim.topk(k, dim=-1)
        weights = top.values.clamp_min(1e-8)  # a negative cosine would flip a neighbour's score
        out += (weights * s[top.indices]).sum(-1) / weights.sum(-1)
    return out / len(ks)


def rescore_with_pool(scores: torch.Tensor, embeddings: torch.Tensor, pool_scores: torch.Tensor,
                      pool_embeddings: torch.Tensor, ks: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """RsCIN against a fixed pool: ``(N,)`` scores and ``(N, D)`` embeddings of images scored
    by a pool whose own scores and embeddings are ``(R,)``, ``(R, D)`` -> ``(N,)``.  Each
    image is re-scored by :func:`rescore_images` over itself and the pool, never over the
    other images, so its score does not depend on what it was scored with."""
    if not ks or scores.shape[0] == 0:
        return scores.float()
    pool_s, pool_e = pool_scores.to(scores), pool_embeddings.to(embeddings)
    return torch.stack([rescore_images(torch.cat([scores[i:i + 1], pool_s]),
                                       torch.cat([embeddings[i:i + 1], pool_e]), ks)[0]
                        for i in range(scores.shape[0])])
