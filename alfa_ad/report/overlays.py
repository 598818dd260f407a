"""Overlays of one class on one colour scale, rendered after the class is scored.

The class's scale is known only after its last image, so :class:`ClassOverlayWriter`
spills each image's map to disk (downsampled to at most :data:`SPILL_SIDE` pixels on the
longer side, as ``uint16`` over the image's own min..max, i.e. a step of at most
1/65535 of that range) plus its ground truth (bit-packed), in a temporary folder under the
output folder; :meth:`~ClassOverlayWriter.finish` fixes the scale, renders every overlay
from the spill (re-reading each image from disk) and deletes the spill. Memory held: the
class's histograms (:class:`~alfa_ad.report.scale.PixelStats`, a few MB) and one
line of metadata per image.

``finish`` also writes ``class_stats/<class>.json`` (the scale, the thresholds) and
``class_stats/<class>.npz`` (the pixel histograms) for the report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.atomic import atomic_save_image, atomic_write_text
from ..io.images import ImageLoadError, load_image
from ..io.overlay import MAX_OVERLAY_SIDE, fit_size, render_overlay
from ..scoring.masks import defect_mask
from .scale import SCALE_MODES, ColourScale, PixelStats
from .thumbs import save_thumbnail, thumb_path

SPILL_SIDE = 256
STATS_DIR = "class_stats"


@dataclass
class _Spilled:
    key: str
    image_path: Path
    score: float | None
    file: Path | None  # None: already rendered (image scale)
    decision: bool | None = None  # calibrated decision: the defect mask is outlined when anomalous


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize(
        size, Image.Resampling.BILINEAR))


class ClassOverlayWriter:
    """Collects one class's maps, then writes its overlays on one scale.

    >>> w = ClassOverlayWriter(out, "bottle", thresholds={"pixel": 0.4, ...})   # doctest: +SKIP
    >>> w.add("bottle/good/000", path, anomaly_map, mask, score=0.3)            # per image
    >>> w.finish()                                                               # after the class
    """

    def __init__(self, out: Path, class_name: str, *, scale: str = "class", render: bool = True,
                 thresholds: dict[str, Any] | None = None, banner: str | None = None, alpha: float = 0.5) -> None:
        if scale not in SCALE_MODES:
            raise ValueError(f"overlay scale must be one of {', '.join(SCALE_MODES)}, got {scale!r}")
        self.out, self.class_name, self.mode, self.render = Path(out), class_name, scale, render
        self.thresholds = thresholds or None
        self.banner, self.alpha = banner, alpha
        self.stats = PixelStats()
        self.items: list[_Spilled] = []
        self.warnings: list[str] = []
        self._spill: Path | None = None

    @property
    def pixel_threshold(self) -> float | None:
        value = (self.thresholds or {}).get("pixel")
        return None if value is None else float(value)

    def add(self, key: str, image_path: Path, anomaly_map: np.ndarray, mask: np.ndarray | None = None, *,
            score: float | None = None, image: Image.Image | None = None, decision: bool | None = None) -> None:
        """One scored image. ``mask``: ground truth at the map's size (all False for a good image),
        None when unknown; ``image`` saves re-reading the file in ``image`` scale mode."""
        amap = np.asarray(anomaly_map, dtype=np.float32)
        if mask is not None and np.shape(mask) != amap.shape:
            mask = _resize(np.asarray(mask, dtype=np.float32), (amap.shape[1], amap.shape[0])) >= 0.5
        self.stats.add(amap, mask)
        if not self.render:
            return
        if self.mode == "image":
            lo, hi = float(amap.min()), float(amap.max())
            scale = ColourScale(lo, max(hi, lo + 1e-6), "image", self.pixel_threshold)
            self._write(key, image if image is not None else Path(image_path), amap, mask, scale, score, decision)
            self.items.append(_Spilled(key, Path(image_path), score, None, decision))
            return
        if self._spill is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._spill = Path(tempfile.mkdtemp(prefix=".spill-", dir=self.out))
        h, w = amap.shape
        small = _resize(amap, fit_size((w, h), SPILL_SIDE))
        lo, hi = float(small.min()), float(small.max())
        code = np.round((small - lo) / (hi - lo) * 65535).astype(np.uint16) if hi > lo else \
            np.zeros(small.shape, np.uint16)
        file = self._spill / f"{len(self.items)}.npz"
        extra = {} if mask is None else {"mask": np.packbits(np.asarray(mask, bool), axis=None)}
        np.savez(file, code=code, lo=lo, hi=hi, shape=np.array([h, w]), **extra)
        self.items.append(_Spilled(key, Path(image_path), score, file, decision))

    def finish(self) -> ColourScale:
        """Fix the scale, render the spilled overlays, delete the spill, write the class's stats."""
        scale = self.stats.scale(self.pixel_threshold)
        try:
            for item in self.items:
                if item.file is None:
                    continue
                with np.load(item.file) as z:
                    h, w = (int(v) for v in z["shape"])
                    code, lo, hi = z["code"], float(z["lo"]), float(z["hi"])
                    mask = np.unpackbits(z["mask"], count=h * w).reshape(h, w).astype(bool) if "mask" in z else None
                amap = lo + code.astype(np.float32) * np.float32((hi - lo) / 65535)
                self._write(item.key, item.image_path, amap, mask, scale, item.score, item.decision)
                item.file.unlink()
        finally:
            if self._spill is not None:
                shutil.rmtree(self._spill, ignore_errors=True)
                self._spill = None
        self._save_stats(scale)
        return scale

    def _write(self, key: str, image: Image.Image | Path, amap: np.ndarray, mask: np.ndarray | None,
               scale: ColourScale, score: float | None, decision: bool | None = None) -> None:
        try:
            im = load_image(image) if isinstance(image, Path) else image
        except ImageLoadError as exc:
            self.warnings.append(f"{exc}; no overlay written")
            return
        im = im if im.mode == "RGB" else im.convert("RGB")
        size = fit_size(im.size, MAX_OVERLAY_SIDE)
        if size != im.size:
            im = im.resize(size, Image.Resampling.LANCZOS)
        if amap.shape != (size[1], size[0]):
            amap = _resize(amap, size)
        if mask is not None and mask.shape != (size[1], size[0]):
            mask = _resize(mask.astype(np.float32), size) >= 0.25
        verdict = None if decision is None else ("ANOMALOUS" if decision else "normal")
        text = " | ".join(t for t in (None if score is None else f"score {score:.3f}", verdict,
                                      scale.describe(self.class_name), self.banner) if t)
        threshold = self.pixel_threshold
        # the outline is the defect mask written to masks/ (flagged images only), not everything >= threshold
        prediction = defect_mask(amap, threshold) if decision and threshold is not None else None
        canvas = render_overlay(im, amap, vmin=scale.vmin, vmax=scale.vmax, alpha=self.alpha, banner=text,
                                mask=mask if mask is not None and mask.any() else None, colorbar=True,
                                threshold=threshold, prediction=prediction)
        # zlib level 1: about 4x faster than the default 6 on photos, files ~15% larger
        atomic_save_image(self.out / "overlays" / f"{key}.png", canvas, compress_level=1)
        save_thumbnail(canvas, thumb_path(self.out, key))  # after the overlay: the report sees it up to date

    def _save_stats(self, scale: ColourScale) -> None:
        folder = self.out / STATS_DIR
        self.stats.save(folder / f"{self.class_name}.npz")
        info = {"class": self.class_name, "overlay_scale": self.mode, "scale": scale.as_dict(),
                "scale_description": scale.describe(self.class_name), "thresholds": self.thresholds,
                "n_images": self.stats.n_images, "n_regions": self.stats.n_regions, "warnings": self.warnings}
        atomic_write_text(folder / f"{self.class_name}.json", json.dumps(info, indent=1))
