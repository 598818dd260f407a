"""The prompt-learning losses (docs/method.md, "Learned prompts", gives the math).

With unit prompt embeddings ``n_i`` (normal) and ``a_j`` (abnormal: hand-written and
learned concatenations), class prototypes ``n = normalize(mean_i n_i)`` and
``a = normalize(mean_j a_j)``, and unit image or window features ``f``:

* contrastive (PromptAD's v2t): a normal feature must pick ``n`` among
  ``{n} U {a_j}``; a synthetic-defect feature must pick ``a`` among ``{a} U {n_i}``
  (cross-entropy of cosine similarities over ``tau``);
* explicit anomaly margin: ``relu(|f - n| - |f - a| + m)`` for a normal feature,
  ``relu(|f - a| - |f - n| + m)`` for a synthetic-defect feature;
* alignment (PromptAD): ``|mean hat a^hand - mean hat a^learned|^2`` between the
  hand-written and the learned abnormal concatenations.

Image and window features are separate groups, each averaged, then the two groups
averaged, so 365 windows do not drown one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .features import Features


@dataclass(frozen=True)
class LossWeights:
    temperature: float = 0.07
    margin: float = 0.0
    abnormal: float = 1.0  # weight of the synthetic-defect terms
    align: float = 0.001  # PromptAD's lambda
    per_prompt: bool = True


def _wmean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if weight is None else (x * weight).sum() / weight.sum().clamp(min=1e-12)


def _side_terms(f: torch.Tensor, own: torch.Tensor, own_proto: torch.Tensor, other: torch.Tensor,
                other_proto: torch.Tensor, w: LossWeights, per_prompt: bool,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """Contrastive + margin loss of features ``f`` that belong to the ``own`` side
    (weighted mean over features)."""
    if f.shape[0] == 0:
        return f.new_zeros(())
    neg = f @ other.T  # (N, Q)
    if per_prompt:  # every own prompt against all of the other side
        pos = f @ own.T  # (N, P)
        logits = torch.cat([pos.reshape(-1, 1), neg.repeat_interleave(own.shape[0], 0)], 1) / w.temperature
    else:
        logits = torch.cat([f @ own_proto[:, None], neg], 1) / w.temperature
    ce = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=f.device), reduction="none")
    ce = ce.view(f.shape[0], -1).mean(1)
    margin = F.relu((f - own_proto).norm(dim=-1) - (f - other_proto).norm(dim=-1) + w.margin)
    return _wmean(ce + margin, weight)


def group_loss(f: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor,
               learned: torch.Tensor, w: LossWeights) -> torch.Tensor:
    """Loss of one feature group: ``f`` ``(N, D)`` unit, ``y`` 0/1, ``weight`` per feature; unit
    prompts: ``normal`` ``(P, D)``, ``abnormal`` ``(Q, D)`` (hand-written and learned
    concatenations), ``learned`` (the learned concatenations alone, the only ones taught
    by synthetic defects)."""
    n_proto = F.normalize(normal.mean(0), dim=-1)
    loss = _side_terms(f[y == 0], normal, n_proto, abnormal, F.normalize(abnormal.mean(0), dim=-1), w,
                       w.per_prompt)
    if w.abnormal and bool((y == 1).any()):
        loss = loss + w.abnormal * _side_terms(f[y == 1], learned, F.normalize(learned.mean(0), dim=-1), normal,
                                               n_proto, w, w.per_prompt, weight[y == 1])
    return loss


def prompt_loss(normal: torch.Tensor, hand: torch.Tensor, learned: torch.Tensor, feats: Features,
                w: LossWeights, align: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss for raw prompt embeddings and the (unit) features; also its parts.
    ``align=False`` leaves the alignment term out (the validation loss)."""
    n = F.normalize(normal, dim=-1)
    hand_u, learned_u = F.normalize(hand, dim=-1), F.normalize(learned, dim=-1)
    a = torch.cat([hand_u, learned_u])
    groups = feats.groups()
    data = sum(group_loss(f, y, c, n, a, learned_u, w) for f, y, c in groups) / max(1, len(groups))
    parts = {"data": float(data.detach())}
    total = data
    if align and w.align and hand.shape[0]:
        match = (hand_u.mean(0) - learned_u.mean(0)).pow(2).sum()
        total = total + w.align * match
        parts["align"] = float(match.detach())
    parts["total"] = float(total.detach())
    return total, parts


FOCAL_GAMMA = 2.0  # CLIP-ADA-style segmentation loss: focal + dice on the labelled windows


def adapted(prompts: torch.Tensor, adapter: torch.Tensor | None) -> torch.Tensor:
    """Unit prompt embeddings seen through the linear visual adapter ``W``: ``<W f, t> =
    <f, W^T t>``, so the adapter folds into the prompts (``t W`` as rows), renormalised."""
    return F.normalize(prompts if adapter is None else prompts @ adapter, dim=-1)


def clip_ada_loss(normal: torch.Tensor, hand: torch.Tensor, learned: torch.Tensor, feats: Features,
                  w: LossWeights, adapter: torch.Tensor | None, adapter_weight: float = 1.0,
                  align: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The self-supervised objective (docs/method.md 1d, "CLIP-ADA mode"): per feature the
    abnormal probability ``p = softmax([<f, n>, <f, l>] / tau)[1]`` against the adapted normal
    and learned-abnormal prototypes; focal loss on every labelled feature (groups averaged
    as in :func:`prompt_loss`) plus the dice loss of the windows, plus ``|W - I|^2``."""
    n = F.normalize(adapted(normal, adapter).mean(0), dim=-1)
    l_ = F.normalize(adapted(learned, adapter).mean(0), dim=-1)
    terms = []
    for f, y, c in feats.groups():
        logits = torch.stack([f @ n, f @ l_], -1) / w.temperature
        p = logits.softmax(-1)[:, 1]
        yf = y.to(p.dtype)
        pt = torch.where(y == 1, p, 1 - p).clamp(1e-6, 1)
        focal = -((1 - pt) ** FOCAL_GAMMA) * pt.log()
        weight = torch.where(y == 1, c * w.abnormal, torch.ones_like(c))
        loss = _wmean(focal, weight)
        if bool((y == 1).any()):
            loss = loss + 1 - 2 * (p * yf).sum() / (p.sum() + yf.sum()).clamp(min=1e-6)
        terms.append(loss)
    data = sum(terms) / max(1, len(terms))
    parts = {"data": float(data.detach())}
    total = data
    if adapter is not None and adapter_weight:
        eye = torch.eye(adapter.shape[0], dtype=adapter.dtype, device=adapter.device)
        reg = (adapter - eye).pow(2).sum()
        total = total + adapter_weight * reg
        parts["adapter"] = float(reg.detach())
    if align and w.align and hand.shape[0]:
        match = (F.normalize(hand, dim=-1).mean(0) - F.normalize(learned, dim=-1).mean(0)).pow(2).sum()
        total = total + w.align * match
        parts["align"] = float(match.detach())
    parts["total"] = float(total.detach())
    return total, parts
