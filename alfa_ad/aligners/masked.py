"""``--aligner masked``: the paper's ``f_I,ij = f(x ⊙ m_ij)`` by token dropping.

For each window, the class token and the window's patch tokens (after the positional
embedding) go through ``ln_pre``, **every** transformer block, ``ln_post`` and the
projection; the other patches are dropped, so no block sees outside the window.  This
is WinCLIP's masked window embedding (and ALFA section 4.3's definition).  Cost: one
transformer pass per window on ``1 + s^2`` tokens.

How it runs (the outputs are those of the vision tower's own blocks, to float rounding):
the windows of every scale and every image of a batch are packed into one token matrix,
so each block's four matrix products run on up to :data:`MAX_TOKENS` rows at once with
no padding; attention runs per window length (``scaled_dot_product_attention``); in the
last block only the class tokens, which are all the head reads, go through the output
projection and the MLP.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Aligner, Features

MAX_TOKENS = 4096  # rows of one packed call (a ViT-B-16-plus MLP activation of this size: ~59 MB in fp32)


class MaskedAligner(Aligner):
    name = "masked"
    default_projection = "none"
    help = "f(x ⊙ m): class token + the window's patches through every block (the paper's definition)"

    def __init__(self, backbone, text_projection: str | None = None, max_tokens: int = MAX_TOKENS,
                 cross_window: bool = False) -> None:
        super().__init__(backbone, text_projection)
        self.max_tokens = max_tokens
        self.cross_window = cross_window
        self.packed = all(_plain_block(b) for b in self.visual.transformer.resblocks)

    def forward(self, features: Features, state, windows: torch.Tensor) -> torch.Tensor:
        """``cross_window=True`` reproduces anomalib 2.x on open_clip >= 2.2x: anomalib
        permutes the masked batch to sequence-first before calling a batch-first
        transformer, so attention runs across all windows (and images) at each token
        position instead of within a window (docs/method.md section 6).  Kept only for
        the side-by-side comparison; all windows then go through in one call."""
        if self.cross_window:
            v, tokens = self.visual, features.tokens
            b = tokens.shape[0]
            idx = self.window_index(windows).to(tokens.device)
            x = tokens[:, idx].transpose(0, 1).reshape(idx.shape[0] * b, idx.shape[1], -1)  # window-major
            x = v.transformer(v.ln_pre(x).transpose(0, 1)).transpose(0, 1)
            return self.backbone.head(x[:, 0]).view(idx.shape[0], b, -1).transpose(0, 1)
        return self.window_embeddings(features, state, [windows])[0]

    def window_embeddings(self, features: Features, state, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``(B, n_s, D)`` for every scale's windows, all scales packed together."""
        if self.cross_window:
            return [self(features, state, w) for w in windows]
        tokens = features.tokens
        b = int(tokens.shape[0])  # python ints: a traced graph keeps the plan, which fits any batch
        parts = []  # (B, n_s, 1 + s^2, W) per scale, after ln_pre
        for w in windows:
            idx = self.window_index(w).to(tokens.device)
            parts.append(self.visual.ln_pre(tokens[:, idx]))
        out: list[list[torch.Tensor]] = [[] for _ in parts]
        for call in _calls([(int(p.shape[1]), int(p.shape[2])) for p in parts], max(1, self.max_tokens // max(b, 1))):
            pieces = [parts[i][:, lo:hi] for i, lo, hi in call]
            if self.packed:
                results = packed_class_tokens(self.visual.transformer.resblocks, pieces)
            else:  # blocks of another kind: the tower's own transformer, one piece at a time
                results = [self.visual.transformer(p.flatten(0, 1))[:, 0].unflatten(0, p.shape[:2]) for p in pieces]
            for (i, _, _), r in zip(call, results):
                out[i].append(r)
        return [self.backbone.head(torch.cat(o, 1)) for o in out]


def _calls(shapes: Sequence[tuple[int, int]], max_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Window ranges ``(part, lo, hi)`` of each call (``shapes``: windows and tokens per window
    of each part, per image): parts in order, cut so that a call holds at most ``max_tokens``
    tokens per image (at least one window)."""
    calls, current, used = [], [], 0
    for i, (n, length) in enumerate(shapes):
        lo = 0
        while lo < n:
            take = max(1, min(n - lo, (max_tokens - used) // length))
            if used and used + take * length > max_tokens:
                calls.append(current)
                current, used = [], 0
                continue
            current.append((i, lo, lo + take))
            used += take * length
            lo += take
    if current:
        calls.append(current)
    return calls


def _plain_block(block) -> bool:
    """An open_clip ``ResidualAttentionBlock`` with ``nn.MultiheadAttention`` (what the packed
    path reproduces)."""
    attn = getattr(block, "attn", None)
    return (isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn.in_proj_weight is not None
            and attn.bias_k is None and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def packed_class_tokens(blocks, pieces: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``pieces[i]``: ``(B, n_i, L_i, W)`` windows after ``ln_pre``; returns their class tokens
    ``(B, n_i, W)`` after every block, computed on one ``(B, sum n_i L_i, W)`` token matrix
    (offsets are per image, so a traced graph takes any batch size)."""
    shapes = [(int(p.shape[1]), int(p.shape[2])) for p in pieces]
    x = torch.cat([p.flatten(1, 2) for p in pieces], 1)
    *inner, last = blocks
    for block in inner:
        x = x + block.ls_1(_attention(block, block.ln_1(x), shapes))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    # the last block: keys and values from every token, the rest for the class tokens only
    firsts = [start + j * length for (n, length), start in zip(shapes, _starts(shapes)) for j in range(n)]
    h = _attention(last, last.ln_1(x), shapes, classes_only=True)
    cls = x[:, firsts] + last.ls_1(h)
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    return list(cls.split([n for n, _ in shapes], dim=1))


def _starts(shapes: Sequence[tuple[int, int]]) -> list[int]:
    starts, at = [], 0
    for n, length in shapes:
        starts.append(at)
        at += n * length
    return starts


def _attention(block, h: torch.Tensor, shapes: Sequence[tuple[int, int]], classes_only: bool = False) -> torch.Tensor:
    """``nn.MultiheadAttention`` self-attention within each window (the tokens of ``h``,
    ``(B, T, W)``, grouped as ``shapes``), output projection included; ``classes_only``: the
    class tokens' rows only, ``(B, windows, W)``."""
    attn = block.attn
    heads, width = attn.num_heads, h.shape[-1]
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    outs = []
    for (n, length), start in zip(shapes, _starts(shapes)):
        part = qkv[:, start : start + n * length].reshape(-1, length, 3, heads, width // heads)
        q, k, v = part.permute(2, 0, 3, 1, 4)  # (B n, heads, L, d) each
        if classes_only:
            q = q[:, :, :1]
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # (B n, L or 1, heads, d)
        outs.append(o.reshape(h.shape[0], -1, width))
    return F.linear(torch.cat(outs, 1), attn.out_proj.weight, attn.out_proj.bias)
