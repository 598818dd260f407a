"""Image -> model input, in torch: crop, resize (bicubic, antialiased) and normalise.

Resizing happens in torch rather than in PIL so that the model input does not
depend on the installed Pillow's resampling code (Pillow 13 changed the order of
its two resize passes, which moved pixel values by 1-2 grey levels), and so that
it runs on the model's device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive), in source pixels


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` uint8 tensor of an RGB PIL image."""
    array = np.array(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)  # writable copy
    return torch.from_numpy(array).permute(2, 0, 1)


def resize_to_model(
    crops: Sequence[torch.Tensor],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize each ``(3, h, w)`` uint8 crop to ``size`` (H, W) and normalise: ``(B, 3, H, W)``.

    Bicubic with antialiasing (``align_corners=False``), values clamped to [0, 1]
    after resampling, then ``(x - mean) / std``.  Crops already at ``size`` are not
    resampled.  The uint8 data moves to ``device`` before it is converted to float.
    """
    out = []
    for crop in crops:
        x = crop.to(device, non_blocking=True).unsqueeze(0).float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        out.append(x)
    if not out:
        return torch.zeros(0, 3, *size, device=device, dtype=dtype)
    batch = torch.cat(out)
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return ((batch - m) / s).to(dtype)


def crop(tensor: torch.Tensor, box: Box | None) -> torch.Tensor:
    """The ``box`` region of a ``(3, H, W)`` tensor (the whole tensor for ``None``)."""
    if box is None:
        return tensor
    top, left, bottom, right = box
    return tensor[:, top:bottom, left:right]


def to_model_input(images: Sequence[Image.Image], boxes: Sequence[Box | None] | None, size: tuple[int, int],
                   mean: Sequence[float], std: Sequence[float], device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """Crop (``boxes``, default whole images), resize and normalise a batch:
    ``(B, 3, H, W)`` on ``device`` in ``dtype`` (what every backbone's ``preprocess`` does)."""
    boxes = boxes if boxes is not None else [None] * len(images)
    crops = [crop(image_to_tensor(im), box) for im, box in zip(images, boxes)]
    return resize_to_model(crops, size, mean, std, device, dtype)

