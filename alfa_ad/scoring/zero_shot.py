"""Language scores: softmax over normal/abnormal class embeddings (ALFA eq. 10-12)."""

from __future__ import annotations

import torch

TEMPERATURE = 0.07  # CLIP's initial temperature, as WinCLIP uses (1/0.07 ~= 14.3)


def anomaly_probability(
    embeddings: torch.Tensor, class_embeddings: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Probability of the abnormal class: eq. (10) for global, eq. (11) for local embeddings.

    ``P = exp(cos(f, t-)/tau) / (exp(cos(f, t+)/tau) + exp(cos(f, t-)/tau))``.

    Args:
        embeddings: ``(B, N, D)`` image or window embeddings (any norm).
        class_embeddings: ``(2, D)`` shared or ``(B, 2, D)`` per image, or ``(B, N, 2, D)``
            per window; row 0 normal, row 1 abnormal (any norm).

    Returns:
        ``(B, N)`` abnormal probabilities.
    """
    f = torch.nn.functional.normalize(embeddings, dim=-1)
    t = torch.nn.functional.normalize(class_embeddings, dim=-1)
    if t.ndim == 2:
        logits = f @ t.T
    elif t.ndim == 3:
        logits = f @ t.transpose(-1, -2)
    else:
        logits = (f.unsqueeze(-2) * t).sum(-1)
    return (logits / temperature).softmax(-1)[..., 1]


def image_score(global_score: torch.Tensor, anomaly_map: torch.Tensor) -> torch.Tensor:
    """Eq. (12): ``S = (S_G + max_ij S_L) / 2`` for ``(B,)`` scores and ``(B, H, W)`` maps."""
    return 0.5 * (global_score + anomaly_map.flatten(1).amax(-1))


def rank_one_transfer(global_emb: torch.Tensor, local_emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Project text embeddings from the global into each window's local space.

    ``W_T = I + (l - g) g^T`` with unit ``g = f(x)/|f(x)|`` and ``l = f_ij/|f_ij|`` is
    the linear map closest to the identity (Frobenius norm) that sends the global
    image embedding to the local one (``W_T g = l``).  Applied to each class
    embedding ``t``: ``W_T t = t + (l - g) <g, t>``.

    Args:
        global_emb: ``(B, D)``.  local_emb: ``(B, N, D)``.
        text: ``(B, 2, D)`` per-image class embeddings.

    Returns:
        ``(B, N, 2, D)`` projected class embeddings (not normalised).
    """
    g = torch.nn.functional.normalize(global_emb, dim=-1)
    loc = torch.nn.functional.normalize(local_emb, dim=-1)
    coef = (text * g.unsqueeze(1)).sum(-1)  # (B, 2): <g, t>
    shift = (loc - g.unsqueeze(1)).unsqueeze(2)  # (B, N, 1, D)
    return text.unsqueeze(1) + shift * coef[:, None, :, None]
