"""``--aligner masked``: the paper's ``f_I,ij = f(x ⊙ m_ij)`` by token dropping.

For each window, the class token and the window's patch tokens (after the positional
embedding) go through ``ln_pre``, **every** transformer block, ``ln_post`` and the
projection; the other patches are dropped, so no block sees outside the window.  This
is WinCLIP's masked window embedding (and ALFA section 4.3's definition); windows are
batched (``chunk`` windows per transformer call).  Cost: one transformer pass per
window on ``1 + s^2`` tokens.
"""

from __future__ import annotations

import torch

from .base import Aligner, Features


class MaskedAligner(Aligner):
    name = "masked"
    default_projection = "none"
    help = "f(x ⊙ m): class token + the window's patches through every block (the paper's definition)"

    def __init__(self, backbone, text_projection: str | None = None, chunk: int = 256,
                 cross_window: bool = False) -> None:
        super().__init__(backbone, text_projection)
        self.chunk = chunk
        self.cross_window = cross_window

    def forward(self, features: Features, state, windows: torch.Tensor) -> torch.Tensor:
        """``cross_window=True`` reproduces anomalib 2.x on open_clip >= 2.2x: anomalib
        permutes the masked batch to sequence-first before calling a batch-first
        transformer, so attention runs across all windows (and images) at each token
        position instead of within a window (docs/method.md section 6).  Kept only for
        the side-by-side comparison; all windows then go through in one call."""
        v = self.visual
        tokens = features.tokens
        b = tokens.shape[0]
        idx = self.window_index(windows).to(tokens.device)
        if self.cross_window:
            x = tokens[:, idx].transpose(0, 1).reshape(idx.shape[0] * b, idx.shape[1], -1)  # window-major
            x = v.transformer(v.ln_pre(x).transpose(0, 1)).transpose(0, 1)
            return self.backbone.head(x[:, 0]).view(idx.shape[0], b, -1).transpose(0, 1)
        outs = []
        for s in range(0, idx.shape[0], self.chunk):
            ix = idx[s : s + self.chunk]
            x = tokens[:, ix].reshape(b * ix.shape[0], ix.shape[1], -1)
            x = v.transformer(v.ln_pre(x))
            outs.append(self.backbone.head(x[:, 0]).view(b, ix.shape[0], -1))
        return torch.cat(outs, 1)
