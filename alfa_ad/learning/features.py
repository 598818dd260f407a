"""Frozen image features for prompt learning, computed once before the loop.

The image tower is frozen, so every feature the losses compare with the prompts is
computed once: the global embedding ``f(x)`` of each normal shot (eq. 10's input)
and the local embedding of every window of each scale (the fine-grained aligner's
input, eq. 11; the value aligner, :mod:`alfa_ad.aligners.value`) of the shots and of the
synthetic defects made on them.  Images are resized whole to the model input (no
tiling).

Labels and weights: a shot's image and windows are normal (label 0, weight 1).  Of
a synthetic defect's windows, those that do not touch the defect are normal, those
with at least half of their area in it are abnormal (label 1), the rest are left
out.  An abnormal window's weight is how much the defect changed its feature,
``1 - cos(f_defect, f_shot)`` against the same window of the clean shot, divided by
the mean of that change over all abnormal windows: a defect the model cannot see
(a grey patch on grey texture) changes nothing and teaches nothing, instead of
teaching the abnormal prompts to look like normal texture.  A synthetic image's
global feature is not used: a defect of 1-6% of the image barely moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model.backbone import ClipBackbone
from ..scoring.windows import make_window_indices


@dataclass
class Features:
    """Unit-norm features, labels (0 normal, 1 abnormal) and weights, per kind."""

    image: torch.Tensor  # (Ni, D)
    image_labels: torch.Tensor  # (Ni,)
    window: torch.Tensor  # (Nw, D)
    window_labels: torch.Tensor  # (Nw,)
    window_weights: torch.Tensor  # (Nw,)

    def to(self, device: torch.device) -> "Features":
        return Features(*(t.to(device) for t in (self.image, self.image_labels, self.window, self.window_labels,
                                                 self.window_weights)))

    def groups(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(features, labels, weights)`` of the image and the window group (non-empty ones)."""
        out = [(self.image, self.image_labels, torch.ones_like(self.image_labels, dtype=self.image.dtype)),
               (self.window, self.window_labels, self.window_weights)]
        return [g for g in out if g[0].shape[0]]

    @property
    def counts(self) -> dict[str, int]:
        return {"images_normal": int((self.image_labels == 0).sum()),
                "windows_normal": int((self.window_labels == 0).sum()),
                "windows_abnormal": int((self.window_labels == 1).sum())}


# The window embeddings learning sees: the value aligner (the last block's class attention
# restricted to the window), fast enough for the many synthetic defects; docs/method.md 1d.
LOCAL_ALIGNER = "value"


def _patch_fractions(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch (image resized whole to the grid) covered by ``mask``: ``(P,)``."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(m, size=grid, mode="area")[0, 0].flatten()


@torch.no_grad()
def _encode(backbone: ClipBackbone, images: Sequence[Image.Image], windows: list[torch.Tensor], batch_size: int
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Unit global embeddings ``(N, D)`` and per scale unit window embeddings ``(N, n_s, D)``."""
    from ..aligners.base import encode
    from ..registry import ALIGNERS

    aligner = ALIGNERS.get(LOCAL_ALIGNER)(backbone)
    glob, local = [], [[] for _ in windows]
    for start in range(0, len(images), batch_size):
        pixels = backbone.preprocess(list(images[start : start + batch_size]))
        feats = encode(backbone, pixels)
        glob.append(F.normalize(feats.g.float(), dim=-1).cpu())
        state = aligner.prepare(feats)
        for s, w in enumerate(windows):
            local[s].append(F.normalize(aligner(feats, state, w.to(pixels.device)).float(), dim=-1).cpu())
    return torch.cat(glob), [torch.cat(x) for x in local]


@torch.no_grad()  # not inference_mode: the losses' autograd graph uses these tensors
def extract_features(backbone: ClipBackbone, shots: Sequence[Image.Image], defects: Sequence[Image.Image],
                     masks: Sequence[np.ndarray], sources: Sequence[int], scales: Sequence[int],
                     batch_size: int = 8) -> Features:
    """Features of the normal ``shots`` and of the synthetic ``defects`` (``masks[i]`` the
    defect of ``defects[i]``, made on ``shots[sources[i]]``)."""
    windows = [make_window_indices(backbone.grid, s) for s in scales]
    g_shot, w_shot = _encode(backbone, shots, windows, batch_size)
    win_f = [w.reshape(-1, w.shape[-1]) for w in w_shot]
    win_y = [torch.zeros(sum(w.shape[0] * w.shape[1] for w in w_shot), dtype=torch.long)]
    win_c = [torch.ones(win_y[0].shape[0])]
    if defects:
        _, w_def = _encode(backbone, defects, windows, batch_size)
        src = torch.as_tensor(list(sources), dtype=torch.long)
        for s, w in enumerate(windows):
            change = 1 - (w_def[s] * w_shot[s][src]).sum(-1)  # (M, n_s)
            frac = torch.stack([_patch_fractions(m, backbone.grid)[w].mean(1) for m in masks])  # (M, n_s)
            for label, keep in ((0, frac == 0), (1, frac >= 0.5)):
                win_f.append(w_def[s][keep])
                win_y.append(torch.full((int(keep.sum()),), label, dtype=torch.long))
                win_c.append(torch.ones(int(keep.sum())) if label == 0 else change[keep].clamp(min=0))
    y, c = torch.cat(win_y), torch.cat(win_c)
    abnormal = y == 1
    if abnormal.any():
        c[abnormal] = c[abnormal] / c[abnormal].mean().clamp(min=1e-12)
    return Features(g_shot, torch.zeros(g_shot.shape[0], dtype=torch.long), torch.cat(win_f), y, c)
