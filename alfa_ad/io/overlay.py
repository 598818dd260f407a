"""Anomaly-map visualisation: a numpy jet colormap, side-by-side overlays and a colour bar."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = ["MAX_OVERLAY_SIDE", "THRESHOLD_COLOUR", "colorize", "fit_size", "render_overlay"]

MAX_OVERLAY_SIDE = 1024
_MASK_COVERAGE = 0.25  # fraction of a downscaled pixel that must be defect to count
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
THRESHOLD_COLOUR = (255, 0, 255)  # magenta: not on the jet scale, apart from the white ground truth

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


def fit_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
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


def _contour(mask: np.ndarray, thickness: int, at_border: bool = True) -> np.ndarray:
    """Inner boundary band of a bool mask, ``thickness`` pixels wide (``at_border=False``:
    not along the image's edges, where a region is only cut off by the frame)."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0 if at_border else 1)


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


def _draw_banner(canvas: Image.Image, text: str) -> int:
    """Draw white ``text`` on a black box across the top of ``canvas`` (in place); returns its height."""
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
    return box_height


def _label_decimals(vmin: float, vmax: float) -> int:
    """Decimals that tell ``vmin`` and ``vmax`` apart (two significant digits of the span)."""
    span = vmax - vmin
    return int(min(8, max(2, np.ceil(-np.log10(span)) + 2))) if span > 0 else 2


def _colorbar_font(height: int) -> Font:
    return ImageFont.load_default(size=max(10, min(24, height // 22)))


def _colorbar_width(height: int, vmin: float, vmax: float, threshold: float | None) -> int:
    font = _colorbar_font(height)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    decimals = _label_decimals(vmin, vmax)
    labels = [f"{v:.{decimals}f}" for v in (vmin, vmax)]
    if threshold is not None:
        labels.append(f"t {threshold:.{decimals}f}")
    text = max(probe.textlength(t, font=font) for t in labels)
    size = font.size if hasattr(font, "size") else 10
    return int(3 * size // 2 + size // 2 + text + size // 2 + 4)


def _draw_colorbar(canvas: Image.Image, left: int, top: int, vmin: float, vmax: float,
                   threshold: float | None) -> None:
    """A vertical jet bar from ``vmax`` (top) to ``vmin`` with value labels, on white, in place.

    Drawn in the strip ``[left, canvas.width) x [top, canvas.height)``; the threshold, if any,
    is a magenta line across the bar with its value.
    """
    if top >= canvas.height - 1:  # a tiny image under a tall banner: no room left
        return
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left, top, canvas.width - 1, canvas.height - 1), fill=_WHITE)
    font = _colorbar_font(canvas.height)
    size = font.size if hasattr(font, "size") else 10
    x_bar, bar_w = left + size // 2, size
    y0, y1 = top + size, canvas.height - size
    if y1 - y0 < 4:
        return
    values = np.linspace(vmax, vmin, y1 - y0)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colorize(values, vmin, vmax)), (x_bar, y0))
    decimals = _label_decimals(vmin, vmax)

    def y_of(v: float) -> int:
        return int(round(y0 + (vmax - v) / (vmax - vmin) * (y1 - y0 - 1)))

    ticks = [(vmax, _BLACK, ""), (vmin, _BLACK, "")]
    if threshold is not None and vmin <= threshold <= vmax:
        ticks.append((threshold, THRESHOLD_COLOUR, "t "))
    elif y1 - y0 > 4 * size:
        ticks.append(((vmin + vmax) / 2, _BLACK, ""))
    for v, colour, prefix in ticks:
        y = y_of(v)
        draw.line((x_bar - 2, y, x_bar + bar_w + 2, y), fill=colour, width=max(1, size // 8))
        label = f"{prefix}{v:.{decimals}f}"
        box = draw.textbbox((0, 0), label, font=font)
        ty = min(max(y - (box[3] + box[1]) // 2, top), canvas.height - box[3])
        draw.text((x_bar + bar_w + 4, ty), label, fill=colour, font=font)


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
    colorbar: bool = False,
    threshold: float | None = None,
) -> Image.Image:
    """Side-by-side RGB image ``[original | heat-map overlay]`` (``| colour bar`` with ``colorbar``).

    ``anomaly_map`` (and ``mask``, if given) must be HxW with the image's size.
    Inputs whose longer side exceeds :data:`MAX_OVERLAY_SIDE` are downscaled
    first. ``mask`` (ground truth) is drawn as a white contour on the overlay,
    ``prediction`` (the calibrated defect mask, see :mod:`alfa_ad.scoring.masks`) as a
    magenta one; ``banner`` is drawn as white text on a black strip across the top.
    ``colorbar`` adds a strip on the right with the ``vmin``..``vmax`` scale, its values
    and the pixel ``threshold`` (a magenta tick).
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

    size = fit_size(base.size, MAX_OVERLAY_SIDE)
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
    thickness = max(1, max(size) // 512)
    if predicted is not None:
        overlay[_contour(predicted, thickness, at_border=False)] = THRESHOLD_COLOUR
    if truth is not None:
        overlay[_contour(truth, thickness)] = _WHITE

    width, height = size
    strip = _colorbar_width(height, vmin, vmax, threshold) if colorbar else 0
    canvas = Image.new("RGB", (2 * width + strip, height), _WHITE)
    canvas.paste(base, (0, 0))
    canvas.paste(Image.fromarray(overlay), (width, 0))
    top = _draw_banner(canvas, banner) if banner else 0
    if colorbar:
        _draw_colorbar(canvas, 2 * width, top, vmin, vmax, threshold)
    return canvas
