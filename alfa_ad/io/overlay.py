"""Anomaly-map visualisation: a numpy jet colormap and side-by-side overlays."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = ["MAX_OVERLAY_SIDE", "colorize", "render_overlay"]

MAX_OVERLAY_SIDE = 1024
_MASK_COVERAGE = 0.25  # fraction of a downscaled pixel that must be defect to count
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_YELLOW = (255, 230, 0)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def colorize(anomaly_map: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map an HxW float array to HxWx3 uint8 with a jet-like colormap.

    ``vmin`` maps to dark blue, ``vmax`` to dark red; values outside are
    clipped and NaN is treated as ``vmin``.
    """
    values = np.asarray(anomaly_map, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (HxW), got shape {values.shape}")
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin (got vmin={vmin}, vmax={vmax})")
    values = np.nan_to_num(values, nan=vmin, posinf=vmax, neginf=vmin)
    x = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    # Classic jet: each channel is a clipped triangle centred at 3/4, 2/4, 1/4.
    channels = [np.clip(1.5 - np.abs(4.0 * x - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
    return np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def _fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Scale ``(width, height)`` down so the longer side is at most ``max_side``."""
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return size
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW float array to ``size`` (width, height) with antialiased bilinear."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def _check_map_shape(name: str, array: np.ndarray, size: tuple[int, int]) -> None:
    width, height = size
    if array.shape != (height, width):
        raise ValueError(
            f"{name} shape {array.shape} does not match the image size (H, W) = {(height, width)}"
        )


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner boundary band of a bool mask, ``thickness`` pixels wide."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=thickness)


def _banner_font(size: tuple[int, int]) -> Font:
    """Pillow's default font, scaled with the canvas where FreeType is available."""
    width, height = size
    return ImageFont.load_default(size=max(10, min(28, max(height // 24, width // 80))))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: float) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``max_width`` wide (long words overflow)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > max_width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines


def _draw_banner(canvas: Image.Image, text: str) -> None:
    """Draw white ``text`` on a black box across the top of ``canvas`` (in place)."""
    draw = ImageDraw.Draw(canvas)
    font = _banner_font(canvas.size)
    left, top, right, bottom = draw.textbbox((0, 0), "Ag", font=font)
    line_height = bottom - top
    pad = max(2, line_height // 3)
    lines = _wrap(draw, text, font, canvas.width - 2 * pad) or [""]
    box_height = 2 * pad + len(lines) * line_height + (len(lines) - 1) * pad
    draw.rectangle((0, 0, canvas.width - 1, box_height - 1), fill=_BLACK)
    for index, line in enumerate(lines):
        y = pad + index * (line_height + pad) - top
        draw.text((pad, y), line, fill=_WHITE, font=font)


def render_overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    alpha: float = 0.5,
    banner: str | None = None,
    mask: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
) -> Image.Image:
    """Side-by-side RGB image ``[original | heat-map overlay]``.

    ``anomaly_map`` (and ``mask``, if given) must be HxW with the image's size.
    Inputs whose longer side exceeds :data:`MAX_OVERLAY_SIDE` are downscaled
    first. ``mask`` (ground truth) is drawn as a white contour on the overlay,
    ``prediction`` (the calibrated mask) as a yellow one; ``banner`` is drawn as
    white text on a black strip across the top.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image if image.mode == "RGB" else image.convert("RGB")
    scores = np.asarray(anomaly_map, dtype=np.float32)
    _check_map_shape("anomaly_map", scores, base.size)
    truth = None if mask is None else np.asarray(mask, dtype=bool)
    if truth is not None:
        _check_map_shape("mask", truth, base.size)
    predicted = None if prediction is None else np.asarray(prediction, dtype=bool)
    if predicted is not None:
        _check_map_shape("prediction", predicted, base.size)

    size = _fit_size(base.size, MAX_OVERLAY_SIDE)
    if size != base.size:
        base = base.resize(size, Image.Resampling.LANCZOS)
        scores = _resize_float(scores, size)
        if truth is not None:
            truth = _resize_float(truth.astype(np.float32), size) >= _MASK_COVERAGE
        if predicted is not None:
            predicted = _resize_float(predicted.astype(np.float32), size) >= 0.5

    heat = colorize(scores, vmin, vmax).astype(np.float32)
    blended = (1.0 - alpha) * np.asarray(base, dtype=np.float32) + alpha * heat
    overlay = np.round(blended).clip(0, 255).astype(np.uint8)
    if predicted is not None:
        overlay[_contour(predicted, thickness=max(1, max(size) // 512))] = _YELLOW
    if truth is not None:
        overlay[_contour(truth, thickness=max(1, max(size) // 512))] = _WHITE

    width, height = size
    canvas = Image.new("RGB", (2 * width, height))
    canvas.paste(base, (0, 0))
    canvas.paste(Image.fromarray(overlay), (width, 0))
    if banner:
        _draw_banner(canvas, banner)
    return canvas
