"""``--aligner dense``: training-free dense CLIP features after ClearCLIP.

ClearCLIP (Lan et al., "ClearCLIP: Decomposing CLIP Representations for Dense
Vision-Language Inference", ECCV 2024) finds that CLIP's patch outputs become
usable for dense text alignment when the **last** block is changed in three ways:
query-query ("self-self") attention instead of query-key, no residual connection,
and no feed-forward network.  With ``h = ln_1(z^{L-1})`` and per head
``q = h W_q + b_q``, ``v = h W_v + b_v``::

    A      = softmax_n( <q_m, q_n> / sqrt(d_head) )          (over all tokens n, per token m)
    o_m    = W_o concat_heads( sum_n A_mn v_n ) + b_o          (no residual, no MLP)
    e_p    = proj(ln_post(o_p))                                (per-patch embedding, joint space)

Each patch embedding is compared with the class embeddings directly (no text
projection, as ClearCLIP does).  **Choice (ours):** to share ALFA's window geometry and
harmonic aggregation, a window's local embedding is the mean of its patches'
unit-normalised embeddings; ``--scales 1`` scores every patch on its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Aligner, Features


class DenseAligner(Aligner):
    name = "dense"
    default_projection = "none"
    help = "ClearCLIP dense patch embeddings (last block: q-q attention, no residual, no MLP)"

    def __init__(self, backbone, text_projection: str | None = None) -> None:
        super().__init__(backbone, text_projection)
        block = self.visual.transformer.resblocks[-1]
        if not isinstance(getattr(block, "attn", None), torch.nn.MultiheadAttention):
            raise ValueError("the dense aligner needs a last vision block with nn.MultiheadAttention")

    def patch_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        """Unit-normalised ClearCLIP embeddings of every patch: ``(B, P, D)`` float32."""
        block = self.visual.transformer.resblocks[-1]
        attn: torch.nn.MultiheadAttention = block.attn
        b, t, width = z.shape
        heads = attn.num_heads
        dh = width // heads
        h = block.ln_1(z)
        wq, _, wv = attn.in_proj_weight.chunk(3)
        bq, _, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        q = F.linear(h, wq, bq).view(b, t, heads, dh).transpose(1, 2)  # (B, heads, T, dh)
        v = F.linear(h, wv, bv).view(b, t, heads, dh).transpose(1, 2)
        a = (q @ q.transpose(-1, -2) / math.sqrt(dh)).float().softmax(-1).to(v.dtype)
        o = attn.out_proj((a @ v).transpose(1, 2).reshape(b, t, width))
        return F.normalize(self.backbone.head(o[:, 1:]), dim=-1)

    def prepare(self, features: Features) -> torch.Tensor:
        return self.patch_embeddings(features.z)

    def forward(self, features: Features, state: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        idx = self.window_index(windows)[:, 1:].to(state.device) - 1  # patch indices (no class token)
        return state[:, idx].mean(2)
