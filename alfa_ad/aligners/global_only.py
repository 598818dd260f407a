"""``--aligner none``: no local embedding at all; every window is the whole image.

Each window's "local" embedding is the global ``f(x)``, so the map is the class-token
score broadcast over the image: the ablation baseline without a fine-grained aligner
(paper Table 2, rows without the aligner).
"""

from __future__ import annotations

import torch

from .base import Aligner, Features


class GlobalAligner(Aligner):
    name = "none"
    default_projection = "none"
    localizes = False
    help = "class token only: the global score broadcast over the map (ablation baseline)"

    def forward(self, features: Features, state, windows: torch.Tensor) -> torch.Tensor:
        return features.g.unsqueeze(1).expand(-1, windows.shape[0], -1)
