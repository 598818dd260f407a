"""Anomaly region refinement (CLIP-ADA's coarse-to-fine step; docs/method.md, section 14).

A method's map is refined on the patch grid with the image's own features from several
vision blocks, deepest first: each step moves every patch's score towards the scores
of the patches whose features at that block resemble its own,

    m <- (1 - alpha) m + alpha A_l m,     A_l = softmax_rows(<x_i, x_j> / tau),

where ``x_i`` are the block's patch tokens of the image, centred over the image's
patches and unit-normalised (centring removes the component every token shares, which
would make every pair look alike).  The deep blocks group patches by what they show (a
coarse partition), the shallow ones by local appearance (fine boundaries): the order is
coarse to fine.  ``A_l`` is row-stochastic, so each step is a weighted average and a
constant map stays constant.

At model resolution the refined map is the method's map plus the grid-level change,
upsampled: ``M' = M + up(m_refined - m)`` with ``m`` the area average of ``M`` on the
grid; where the map was the upsampled grid map (every method here), this is exactly the
upsampled refined grid map before smoothing.  Image scores are not changed.

Training-free: one extra pass of the image tower up to the deepest block read (no
window is run), and a ``P x P`` softmax per block read.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 0.1  # tau: cosine similarities of centred tokens over 0.1
ALPHA = 0.5  # the share of each step given to the neighbours' average


def default_layers(depth: int) -> tuple[int, ...]:
    """The blocks read by default, deepest first: the last block, then the blocks at 3/4
    and 1/2 of the depth (0-based; duplicates dropped): ``(11, 8, 5)`` for 12 blocks."""
    picks = [depth - 1, (3 * depth) // 4 - 1, depth // 2 - 1]
    out: list[int] = []
    for p in picks:
        if 0 <= p < depth and p not in out:
            out.append(p)
    return tuple(out)


def affinity(tokens: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``(B, P, W)`` patch tokens -> ``(B, P, P)`` row-stochastic affinity: softmax over
    ``j`` of the cosine similarity of the centred tokens ``i`` and ``j`` over ``tau``."""
    x = tokens.float() - tokens.float().mean(1, keepdim=True)
    x = F.normalize(x, dim=-1)
    return torch.softmax(x @ x.transpose(1, 2) / temperature, dim=-1)


def propagate(patch_map: torch.Tensor, affinities: Sequence[torch.Tensor], alpha: float = ALPHA) -> torch.Tensor:
    """``(B, P)`` map refined by each ``(B, P, P)`` affinity in turn (the given order)."""
    m = patch_map.float()
    for a in affinities:
        m = (1 - alpha) * m + alpha * torch.bmm(a, m.unsqueeze(-1)).squeeze(-1)
    return m


class Refined(NamedTuple):
    maps: torch.Tensor  # (B, H, W) refined maps at model resolution
    before: torch.Tensor  # (B, gh, gw) the method's map averaged on the grid
    after: torch.Tensor  # (B, gh, gw) the same after refinement


class RegionRefiner(nn.Module):
    """Refines a batch of maps at model resolution with the image tower's own features."""

    def __init__(self, backbone, layers: Sequence[int] | None = None, temperature: float = TEMPERATURE,
                 alpha: float = ALPHA) -> None:
        super().__init__()
        depth = backbone.depth
        layers = default_layers(depth) if layers is None else tuple(int(i) for i in layers)
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"refine layers {bad} out of range 0..{depth - 1} for a {depth}-block vision tower")
        if not 0 < alpha <= 1 or temperature <= 0:
            raise ValueError(f"refinement needs 0 < alpha <= 1 and temperature > 0, got {alpha}, {temperature}")
        self.backbone = backbone
        self.layers, self.temperature, self.alpha = layers, float(temperature), float(alpha)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, temperature={self.temperature}, alpha={self.alpha}"

    def block_tokens(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens ``(B, P, W)`` of each block in :attr:`layers`, in that order."""
        bb = self.backbone
        last = bb.depth - 1
        inner = sorted({i for i in self.layers if i != last})
        z, caps = bb.penultimate_with(bb.tokens(pixels), inner)
        found = dict(zip(inner, caps))
        if last in self.layers:
            found[last] = bb.global_embedding(z)[1]
        return [found[i][:, 1:] for i in self.layers]

    @torch.inference_mode()
    def affinities(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The ``(B, P, P)`` affinity of each block read, in order (one image-tower pass)."""
        return [affinity(t, self.temperature) for t in self.block_tokens(pixels)]

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor, maps: torch.Tensor) -> Refined:
        return self.apply(maps, self.affinities(pixels))

    @torch.inference_mode()
    def apply(self, maps: torch.Tensor, affinities: list[torch.Tensor]) -> Refined:
        """``maps`` ``(B, H, W)`` refined with precomputed :meth:`affinities`."""
        grid = tuple(self.backbone.grid)
        maps = maps.to(self.backbone.device).float()
        before = F.adaptive_avg_pool2d(maps.unsqueeze(1), grid).squeeze(1)
        after = propagate(before.flatten(1), affinities, self.alpha).view_as(before)
        change = F.interpolate((after - before).unsqueeze(1), size=maps.shape[-2:], mode="bilinear",
                               align_corners=False).squeeze(1)
        return Refined(maps + change, before, after)
