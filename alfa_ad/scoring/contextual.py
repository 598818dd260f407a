"""Run-time prompt adaptation: the contextual score of ALFA eq. (4).

For one image with global embedding f(x) and prompt embeddings g(t), let
``d(t) = cos(f(x), g(t))``.  The normal interval is ``I+ = [min d+, max d+]`` over
all normal prompts, the abnormal interval ``I- = [min d-, max d-]`` over all
abnormal prompts.  With the point-to-interval distance
``D(d, [a, b]) = max(0, a - d, d - b)`` and ``D+- = |D(d, I+) - D(d, I-)|``::

    S_c(t) = D+- / (D+- + exp(-k * D+-))

``S_c`` lies in [0, 1); a prompt is kept when ``S_c(t) > 0``, i.e. when its
similarity lies outside the other side's interval.  See docs/method.md.

Where the selection applies: :mod:`alfa_ad.scoring.placement`.
"""

from __future__ import annotations

import torch

from .placement import DEFAULT_PLACEMENT, PLACEMENTS, parse_placement  # noqa: F401  (re-exported)


def interval_distance(d: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Distance from points ``d`` to the interval ``[low, high]`` (0 inside)."""
    zero = torch.zeros_like(d)
    return torch.maximum(zero, torch.maximum(low - d, d - high))


def contextual_scores(
    sim_normal: torch.Tensor, sim_abnormal: torch.Tensor, k: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contextual score S_c of every prompt for a batch of images.

    Args:
        sim_normal: ``(B, N+)`` cosine similarities of each image to each normal prompt.
        sim_abnormal: ``(B, N-)`` cosine similarities to each abnormal prompt.
        k: slope of the logistic (the paper uses 1).

    Returns:
        ``(scores_normal (B, N+), scores_abnormal (B, N-))`` in [0, 1).
    """
    lo_n, hi_n = sim_normal.amin(-1, keepdim=True), sim_normal.amax(-1, keepdim=True)
    lo_a, hi_a = sim_abnormal.amin(-1, keepdim=True), sim_abnormal.amax(-1, keepdim=True)

    def score(d: torch.Tensor) -> torch.Tensor:
        gap = (interval_distance(d, lo_n, hi_n) - interval_distance(d, lo_a, hi_a)).abs()
        return gap / (gap + torch.exp(-k * gap))

    return score(sim_normal), score(sim_abnormal)


def keep_masks(
    scores_normal: torch.Tensor, scores_abnormal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean keep-masks (score > 0).  A side that keeps nothing keeps all its prompts.

    Eq. (10) needs one embedding per side; when the filter empties a side (every
    prompt of that side falls inside the other side's interval) we fall back to
    that side's whole vanilla set for that image, as documented in docs/method.md.
    """
    keep_n, keep_a = scores_normal > 0, scores_abnormal > 0
    # ``mask | ~any``: the mask where a prompt is kept, all ones where none is (a boolean
    # ``where`` would do the same, but ONNX Runtime has no boolean Where kernel)
    keep_n = keep_n | ~keep_n.any(-1, keepdim=True)
    keep_a = keep_a | ~keep_a.any(-1, keepdim=True)
    return keep_n, keep_a


def soft_weights(scores: torch.Tensor) -> torch.Tensor:
    """``S_c`` as prompt weights ``(B, N)``; a side whose scores are all 0 weighs every prompt 1."""
    none = scores.sum(-1, keepdim=True) <= 0
    return torch.where(none, torch.ones_like(scores), scores)


def masked_class_embeddings(
    prompts_normal: torch.Tensor,
    prompts_abnormal: torch.Tensor,
    keep_normal: torch.Tensor,
    keep_abnormal: torch.Tensor,
) -> torch.Tensor:
    """Per-image class embeddings from the kept prompts.

    Args:
        prompts_normal: ``(N+, D)`` unit-norm normal prompt embeddings.
        prompts_abnormal: ``(N-, D)`` unit-norm abnormal prompt embeddings.
        keep_normal, keep_abnormal: ``(B, N+)``, ``(B, N-)`` boolean masks, or non-negative
            weights (``soft`` placement).

    Returns:
        ``(B, 2, D)``: row 0 normal, row 1 abnormal; each the unit-normalised (weighted)
        mean of the kept unit prompt embeddings.
    """
    wn = keep_normal.to(prompts_normal.dtype)
    wa = keep_abnormal.to(prompts_abnormal.dtype)
    normal = (wn @ prompts_normal) / wn.sum(-1, keepdim=True)
    abnormal = (wa @ prompts_abnormal) / wa.sum(-1, keepdim=True)
    return torch.nn.functional.normalize(torch.stack((normal, abnormal), dim=1), dim=-1)
