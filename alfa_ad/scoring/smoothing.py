"""Gaussian smoothing of anomaly maps in torch, equal to ``scipy.ndimage.gaussian_filter``.

The kernel and the boundary are scipy's defaults: ``radius = int(truncate * sigma + 0.5)``
(``truncate = 4``), weights ``exp(-x^2 / (2 sigma^2))`` normalised to sum 1, and mode
``"reflect"`` (half-sample symmetric: ``d c b a | a b c d | d c b a``), applied
separably along rows and columns.  Runs on the maps' device, inside the scoring module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's 1-D Gaussian weights (float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return w / w.sum()


def reflect_index(n: int, radius: int) -> torch.Tensor:
    """Indices ``(n + 2 radius,)`` that pad a length-``n`` axis in scipy's "reflect" mode
    (any radius, also longer than the axis)."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of ``(B, H, W)`` maps with standard deviation ``sigma`` pixels
    (0: identity).  Same result as ``gaussian_filter(maps, (0, sigma, sigma))``."""

    def __init__(self, sigma: float, truncate: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        kernel = gaussian_kernel(sigma, truncate) if sigma > 0 else torch.ones(1, dtype=torch.float64)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer("kernel", kernel.float(), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        b, h, w = maps.shape
        r = self.radius
        k = self.kernel.to(maps.dtype)
        x = maps[:, reflect_index(h, r).to(maps.device)]  # (B, H + 2r, W)
        x = F.conv1d(x.transpose(1, 2).reshape(b * w, 1, h + 2 * r), k.view(1, 1, -1))  # along H
        x = x.view(b, w, h).transpose(1, 2)
        x = x[:, :, reflect_index(w, r).to(maps.device)]  # (B, H, W + 2r)
        x = F.conv1d(x.reshape(b * h, 1, w + 2 * r), k.view(1, 1, -1))  # along W
        return x.view(b, h, w)
