"""Few-shot scorers: how a query is compared with the normal references (docs/method.md section 7).

Two siblings behind one small interface, chosen by name through
:data:`alfa_ad.registry.FEW_SHOT_SCORERS`:

* ``bank`` (:class:`BankScorer`): the memory bank of alfa-ad 0.1 -- ALFA: raw
  residual-stream patch tokens of blocks at 1/2 and 3/4 of the depth; WinCLIP+:
  ``ln_post`` patch tokens of the last block and each scale's window embeddings.
* ``residual`` (:class:`ResidualScorer`): InCTRL's training-free parts -- patch
  residuals at several blocks (features after the vision tower's layer norm
  ``ln_post``) and the image-level residual between the query's embedding and the mean
  reference embedding.  The text prior is the method's zero-shot part.

A scorer turns a forward pass into *token sets* (``(B, n_j, d_j)`` each, with how a
set's per-token distances become a per-patch map) and, optionally, an image embedding.
:func:`fit_references` then builds the fitted state once: one greedy coreset per set,
computed once, each kept token remembering which reference image it came from, so
leave-one-out needs no model run and no new coreset (:func:`visual_map` with
``exclude``).  Only the coreset and the leave-one-out results are kept, not the
references' features or pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F

from .memory import greedy_coreset
from .windows import harmonic_aggregation


def default_memory_layers(depth: int) -> tuple[int, ...]:
    """Blocks at 1/2 and 3/4 of the depth (0-based), e.g. (5, 8) for 12 blocks."""
    return tuple(sorted({max(0, min(depth - 2, depth * f // 4 - 1)) for f in (2, 3)}))


def default_residual_layers(depth: int) -> tuple[int, ...]:
    """InCTRL's blocks 7, 9 and 11 of 12 (1-based; outputs of 0-based blocks 6, 8, 10),
    scaled to the depth: ``round(depth * k / 12) - 1`` for k = 7, 9, 11, e.g. (1, 2) for 3 blocks."""
    return tuple(sorted({min(depth - 1, max(0, round(depth * k / 12) - 1)) for k in (7, 9, 11)}))


class FewShotScorer:
    """Interface.  ``layers``: blocks (0-based) whose tokens the scorer reads; the method
    captures ``capture`` in its forward pass and passes the last block's output as ``last``."""

    name: ClassVar[str] = ""
    image_level: ClassVar[bool] = False  # has an image-level residual

    def __init__(self, backbone, layers: Optional[Sequence[int]] = None, windows: bool = False) -> None:
        self.backbone = backbone
        self.depth = backbone.depth
        self.windows = windows
        self.layers = tuple(layers) if layers is not None else self.default_layers(self.depth)
        bad = [i for i in self.layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"few-shot layers {bad} out of range 0..{self.depth - 1}")

    def default_layers(self, depth: int) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def capture(self) -> tuple[int, ...]:
        """Blocks the forward pass must capture (the last block comes with it anyway)."""
        return tuple(i for i in self.layers if i < self.depth - 1)

    def _layer(self, caps: Sequence[torch.Tensor], last: torch.Tensor, i: int) -> torch.Tensor:
        return last if i == self.depth - 1 else caps[self.capture.index(i)]

    def tokens(self, caps: Sequence[torch.Tensor], last: torch.Tensor,
               windows: Optional[Sequence[torch.Tensor]] = None) -> list[torch.Tensor]:
        """Token sets ``(B, n_j, d_j)`` of a batch."""
        raise NotImplementedError

    def image(self, g: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B, D)`` image embeddings for the image-level residual, or None."""
        return F.normalize(g.float(), dim=-1) if self.image_level else None


class BankScorer(FewShotScorer):
    name = "bank"

    def default_layers(self, depth: int) -> tuple[int, ...]:
        return () if self.windows else default_memory_layers(depth)

    def tokens(self, caps, last, windows=None):
        if self.windows:  # WinCLIP+: ln_post patch tokens of the last block, window embeddings per scale
            return [self.backbone.patch_tokens(last)] + [w.float() for w in windows]
        return [self._layer(caps, last, i)[:, 1:].float() for i in self.layers]


class ResidualScorer(FewShotScorer):
    name = "residual"
    image_level = True

    def default_layers(self, depth: int) -> tuple[int, ...]:
        return default_residual_layers(depth)

    def tokens(self, caps, last, windows=None):
        return [self.backbone.patch_tokens(self._layer(caps, last, i)) for i in self.layers]


# ------------------------------------------------------------------ fitted references
@dataclass
class References:
    """A fitted scorer state: per token set the kept unit-norm tokens and their owners
    (reference image index); the mean reference embedding; leave-one-out results."""

    sets: list[torch.Tensor]
    owners: list[torch.Tensor]
    images: Optional[torch.Tensor]  # (U, D) unit image embeddings of the units (tiles), or None
    image_owners: Optional[torch.Tensor]  # (U,)
    n_images: int
    unit_owners: torch.Tensor  # (U,) owner of each unit
    loo_visual: Optional[torch.Tensor] = None  # (U, P) each unit's map against the others' tokens
    loo_image: Optional[torch.Tensor] = None  # (U,) each unit's image residual against the others' mean

    @property
    def size(self) -> int:
        return sum(s.shape[0] for s in self.sets)

    def image_mean(self, exclude: Optional[int] = None) -> Optional[torch.Tensor]:
        if self.images is None:
            return None
        keep = self.image_owners != exclude if exclude is not None else slice(None)
        return F.normalize(self.images[keep].mean(0), dim=-1)


def nn_distance(query: torch.Tensor, bank: torch.Tensor, owners: Optional[torch.Tensor] = None,
                exclude: Optional[int] = None, chunk: Optional[int] = 4096) -> torch.Tensor:
    """``(1 - max cos) / 2`` of each query token to unit-norm ``bank`` tokens, skipping those
    whose owner is ``exclude`` (leave-one-out): ``query.shape[:-1]``.  ``chunk``: bank rows
    per matrix product; None: one product (an exported graph, whose bank size is dynamic)."""
    shape = query.shape[:-1]
    q = F.normalize(query.reshape(-1, query.shape[-1]).float(), dim=-1)
    bank = bank.to(q.device)
    if chunk is None:
        best = (q @ bank.float().T).amax(-1)
        return ((1.0 - best) / 2.0).clamp(0.0, 1.0).reshape(shape)
    best = torch.full((q.shape[0],), -2.0, device=q.device)
    for s in range(0, bank.shape[0], chunk):
        sims = q @ bank[s : s + chunk].T
        if exclude is not None:
            sims = sims.masked_fill((owners[s : s + chunk] == exclude).to(q.device), -2.0)
        best = torch.maximum(best, sims.amax(-1))
    return ((1.0 - best) / 2.0).clamp(0.0, 1.0).reshape(shape)


def visual_map(tokens: Sequence[torch.Tensor], refs: References, covers: Sequence[Optional[torch.Tensor]],
               exclude: Optional[int] = None) -> torch.Tensor:
    """Mean over token sets of the per-patch nearest-neighbour distance: ``(B, P)``.
    ``covers[j]``: the coverage matrix turning set ``j``'s window distances into patch
    values (harmonic aggregation), or None when the set's tokens are the patches."""
    maps = []
    for t, bank, own, cover in zip(tokens, refs.sets, refs.owners, covers):
        d = nn_distance(t, bank, own, exclude)
        maps.append(d if cover is None else harmonic_aggregation(d, cover))
    return torch.stack(maps).mean(0)


def image_residual(images: Optional[torch.Tensor], refs: References, exclude: Optional[int] = None):
    """``(1 - cos(f(x), mean reference embedding)) / 2``: ``(B,)`` or None."""
    mean = refs.image_mean(exclude)
    if images is None or mean is None:
        return None
    return ((1.0 - images @ mean.to(images.device)) / 2.0).clamp(0.0, 1.0)


def fit_references(unit_tokens: Sequence[Sequence[torch.Tensor]], unit_images: Optional[Sequence[torch.Tensor]],
                   unit_owners: Sequence[int], covers: Sequence[Optional[torch.Tensor]],
                   coreset: Optional[int] = None, seed: int = 0) -> References:
    """Fit from per unit (image or tile) its token sets ``[(n_j, d_j), ...]`` and image
    embedding; each set's coreset is computed once.  With two or more reference images,
    every unit's leave-one-out visual map and image residual are computed here, against
    the kept tokens of the *other* images (the coreset minus the unit's own tokens)."""
    if not unit_tokens:
        raise ValueError("no normal reference image to build the memory bank from")
    owners_t = torch.tensor(list(unit_owners))
    sets, owners = [], []
    for j in range(len(unit_tokens[0])):
        feats = torch.cat([u[j] for u in unit_tokens])
        own = torch.cat([torch.full((u[j].shape[0],), o) for u, o in zip(unit_tokens, unit_owners)])
        if coreset is not None:
            keep = greedy_coreset(feats, coreset, seed)
            feats, own = feats[keep.to(feats.device)], own[keep]
        sets.append(F.normalize(feats.float(), dim=-1))
        owners.append(own.to(feats.device))
    images = torch.stack(list(unit_images)) if unit_images is not None else None
    refs = References(sets, owners, images, owners_t if images is not None else None,
                      len(set(unit_owners)), owners_t)
    if refs.n_images >= 2:
        loo_v, loo_i = [None] * len(unit_tokens), [None] * len(unit_tokens)
        for o in sorted(set(unit_owners)):
            idx = [u for u, ow in enumerate(unit_owners) if ow == o]
            tokens = [torch.stack([unit_tokens[u][j] for u in idx]) for j in range(len(sets))]
            vmap = visual_map(tokens, refs, covers, exclude=o)
            res = image_residual(images[idx] if images is not None else None, refs, exclude=o)
            for k, u in enumerate(idx):
                loo_v[u] = vmap[k]
                loo_i[u] = None if res is None else res[k]
        refs.loo_visual = torch.stack(loo_v).cpu()
        refs.loo_image = torch.stack(loo_i).cpu() if images is not None else None
    return refs
