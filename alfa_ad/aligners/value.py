"""``--aligner value``: the last block's class-token attention restricted to the window.

Everything before the last block runs once on the whole image; for a window ``w`` the
class query's softmax attention is renormalised over ``{cls} U w`` and the rest of the
last block (out-projection, residual, MLP, ``ln_post``, projection) is unchanged, so a
window covering every patch gives ``f(x)`` exactly (docs/method.md section 4).  Fast
(one forward pass plus one MLP call per window), but blocks ``1..L-1`` still see the
whole image, and the class token's residual carries the whole image into every window.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .base import Aligner, Features


class ValueState(NamedTuple):
    logits: torch.Tensor  # (B, 1+P, heads) class-query attention logits
    values: torch.Tensor  # (B, 1+P, heads, d_head)


class ValueAligner(Aligner):
    name = "value"
    default_projection = "none"
    help = "last block's class attention renormalised over the window (fast; our approximation)"

    def __init__(self, backbone, text_projection: str | None = None, chunk: int = 512) -> None:
        super().__init__(backbone, text_projection)
        block = self.visual.transformer.resblocks[-1]
        if not isinstance(getattr(block, "attn", None), torch.nn.MultiheadAttention):
            raise ValueError("the value aligner needs a last vision block with nn.MultiheadAttention")
        self.chunk = chunk

    @property
    def block(self):
        return self.visual.transformer.resblocks[-1]

    def prepare(self, features: Features) -> ValueState:
        z = features.z
        attn: torch.nn.MultiheadAttention = self.block.attn
        b, t, width = z.shape
        heads = attn.num_heads
        dh = width // heads
        h = self.block.ln_1(z)
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        q = F.linear(h[:, :1], wq, bq).view(b, 1, heads, dh)
        k = F.linear(h, wk, bk).view(b, t, heads, dh)
        v = F.linear(h, wv, bv).view(b, t, heads, dh)
        return ValueState((k * q).sum(-1) / math.sqrt(dh), v)

    def attention(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, n, 1+k, heads)`` of the class query over each window's
        tokens ``idx (n, 1+k)``: softmax renormalised over the window."""
        return logits[:, idx].float().softmax(dim=2)

    def forward(self, features: Features, state: ValueState, windows: torch.Tensor) -> torch.Tensor:
        z = features.z
        block = self.block
        b, _, width = z.shape
        idx = self.window_index(windows).to(z.device)
        outs = []
        for s in range(0, idx.shape[0], self.chunk):
            ix = idx[s : s + self.chunk]
            a = self.attention(state.logits, ix).to(state.values.dtype)  # (B, n, k+1, heads)
            mixed = (a.unsqueeze(-1) * state.values[:, ix]).sum(2).reshape(b, ix.shape[0], width)
            x = z[:, :1] + block.ls_1(block.attn.out_proj(mixed))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            outs.append(self.backbone.head(x))
        return torch.cat(outs, 1)
