"""Few-shot state of a :class:`~alfa_ad.detector.Detector`: fitting normal references,
the memory banks remembered by content, fusion statistics and calibration.

A mixin, so ``Detector`` keeps one API while the reference handling lives here; its
state is set by :meth:`ReferenceFitting._init_references` (``Detector.__init__`` calls
it).  It relies on the detector's ``method``, ``config``, ``backbone``, ``_units``,
``_unit_batches``, ``class_text`` and ``predict``.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io.images import load_image
from .methods.base import ZeroShotFeatures
from .registry import trait
from .results import Thresholds
from .scoring.fusion import fuse, reference_stats

__all__ = ["BANK_CACHE_SIZE", "LEAVE_ONE_OUT_REFERENCES", "LeaveOneOutReferences", "ReferenceFitting", "ReferenceParts",
           "content_key"]

BANK_CACHE_SIZE = 4  # fitted memory banks a Detector remembers (keyed by the references' content)
LEAVE_ONE_OUT_REFERENCES = 16  # references whose zero-shot features a fit keeps for calibration


def content_key(images: Sequence[Any], extra: str = "") -> str:
    """A digest of the references' content (file bytes, PIL pixels or array bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode())
    for im in images:
        if isinstance(im, (str, os.PathLike)):
            try:
                h.update(Path(im).read_bytes())
            except OSError:
                h.update(f"unreadable:{im}".encode())  # load_image reports it when the bank is built
        elif isinstance(im, Image.Image):
            h.update(f"{im.mode}{im.size}".encode())
            h.update(im.tobytes())
        elif isinstance(im, np.ndarray):
            h.update(f"{im.dtype}{im.shape}".encode())
            h.update(np.ascontiguousarray(im).tobytes())
        else:
            h.update(repr(im).encode())
        h.update(b"|")
    return h.hexdigest()


@dataclass(frozen=True)
class LeaveOneOutReferences:
    """What calibration and normalized fusion keep of the (at most 16) leave-one-out references:
    features, not pixels.

    ``chosen``: their indices among the fitted references, in leave-one-out order;
    ``sizes``: each one's ``(width, height)``; ``groups``: each one's rows in ``features``
    (one per tile); ``units``: those rows' unit numbers in the memory bank's owners;
    ``features``: their zero-shot features on the CPU (None when the method has no text part).
    """

    chosen: tuple[int, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()
    units: tuple[int, ...] = ()
    features: ZeroShotFeatures | None = None

    @property
    def nbytes(self) -> int:
        f = self.features
        return 0 if f is None else sum(t.numel() * t.element_size() for t in [f.g, *f.local])


class ReferenceParts(NamedTuple):
    """The leave-one-out references' zero-shot parts for one class (rows as in
    :attr:`LeaveOneOutReferences.units`) and normalized fusion's statistics (None: raw)."""

    language: torch.Tensor | None  # (U, P) language maps
    global_scores: torch.Tensor | None  # (U,) class-token scores
    stats: Any


class ReferenceFitting:
    """Few-shot methods of :class:`~alfa_ad.detector.Detector` (see the module docstring)."""

    def _init_references(self) -> None:
        """The few-shot state: nothing fitted, no thresholds, no remembered banks."""
        self.thresholds = None
        self.normals: list[str] = []  # one label per fitted reference (features are kept, not images)
        self._normal_groups: list[list[int]] = []  # per reference image: its units (tiles) in the features
        self._loo = LeaveOneOutReferences()  # the <= 16 references calibration scores, as features
        self._class_parts: dict[str, ReferenceParts] = {}  # class -> references' zero-shot parts, fusion statistics
        self._fit_options: dict[str, Any] = {}
        self._banks: OrderedDict[str, tuple] = OrderedDict()  # content key -> a fit, the last BANK_CACHE_SIZE

    def fit_normals(self, images: Sequence[Any], *, coreset: int | None = None, seed: int = 0,
                    max_leave_one_out: int = LEAVE_ONE_OUT_REFERENCES) -> list[str]:
        """Fit the few-shot scorer on normal reference images; returns warnings.

        Raises ``ImageLoadError`` naming a corrupt reference and ``ValueError`` when
        no image is given.  ``coreset`` bounds each token set (greedy k-center, computed
        once).  References are tiled like test images.  Kept afterwards: the coreset, each
        reference's leave-one-out visual results, and for at most ``max_leave_one_out``
        references (chosen with ``seed``) their zero-shot features (global and window
        embeddings, from the same forward pass), which calibration and normalized fusion
        score for any class; not the decoded images, not the other features.  With
        ``max_leave_one_out=0`` nothing is kept for them (and neither can run).
        The last :data:`BANK_CACHE_SIZE` fits are remembered by the references' content,
        so fitting the same references again costs no forward pass.
        """
        if not images:
            raise ValueError("fit_normals needs at least one normal reference image")
        self.thresholds = None  # thresholds belong to the bank they were calibrated with
        self._class_parts = {}
        options = {"coreset": coreset, "seed": seed}
        key = content_key(images, f"{coreset}|{seed}|{self.config.tile}|{max_leave_one_out}")
        if key in self._banks:
            self._banks.move_to_end(key)
            self.normals, self._normal_groups, bank, self._loo, warnings = self._banks[key]
            self._fit_options = options
            self.method.import_bank(bank)
            self._batch_size = None  # batch size "auto": probed again, with the bank's cost
            return list(warnings)
        pil = [load_image(im) for im in images]
        warnings = []
        sizes = sorted({im.size for im in pil})
        if len(sizes) > 1:
            warnings.append(f"normal references have {len(sizes)} different sizes ({sizes[0]} .. {sizes[-1]}); "
                            "all are resized to the model input, so aspect-ratio changes affect the memory bank")
        modes = {_source_mode(im) for im in images} - {None}
        if len(modes) > 1:
            warnings.append(f"normal references mix image modes {sorted(modes)}; all are converted to RGB")
        groups, units = self._units(pil)
        chosen = [int(i) for i in np.random.default_rng(seed).permutation(len(pil))[:max_leave_one_out]]
        keep = {u for i in chosen for u in groups[i]}
        features, zero_shot = self.method.extract_normals(self._unit_batches(pil, units), keep=keep)
        self.method.set_normals(features, owners=[i for i, _ in units], **options)
        del features
        self._loo = _leave_one_out_references(chosen, [pil[i].size for i in chosen], groups, zero_shot)
        del pil
        self.normals = [str(im) if isinstance(im, (str, os.PathLike)) else f"<image {i}>" for i, im in enumerate(images)]
        self._normal_groups = groups
        self._fit_options = options
        self._banks[key] = (self.normals, groups, self.method.export_bank(), self._loo, tuple(warnings))
        while len(self._banks) > BANK_CACHE_SIZE:
            self._banks.popitem(last=False)
        self._batch_size = None  # batch size "auto": probed again, with the bank's cost
        return warnings

    def clear_normals(self) -> None:
        self.method.clear_normals()
        self.normals, self._normal_groups, self._class_parts = [], [], {}
        self._loo = LeaveOneOutReferences()
        self.thresholds = None
        self._batch_size = None

    def _reference_parts(self, class_name: str) -> "ReferenceParts":
        """The leave-one-out references' zero-shot parts for ``class_name`` (their kept
        features against the class's prompts, once per class; no model run) and the fusion
        statistics (None: raw fusion)."""
        if class_name in self._class_parts:
            return self._class_parts[class_name]
        refs = self.method.export_bank()
        loo = self._loo
        language = global_ = None
        if loo.features is not None:
            text = self.class_text(class_name)
            parts = []
            for start in range(0, loo.features.count, self.batch_size):
                rows = range(start, min(start + self.batch_size, loo.features.count))
                parts.append(self.method.zero_shot_scores(loo.features.select(rows).to(self.backbone.device), text))
            language = torch.cat([p[0] for p in parts]).cpu()
            global_ = torch.cat([p[1] for p in parts]).cpu()
        stats = None
        if self.config.fusion == "normalized" and refs is not None and refs.loo_visual is not None and loo.units:
            stats = reference_stats(refs.loo_visual, refs.loo_image, language, global_, list(loo.units),
                                    self.method.peak_of_visual)
        self._class_parts[class_name] = ReferenceParts(language, global_, stats)
        return self._class_parts[class_name]

    def _fusion_stats(self, class_name: str):
        if self.config.fusion != "normalized" or self.method.export_bank() is None or len(self.normals) < 2:
            return None
        return self._reference_parts(class_name).stats

    def fusion_statistics(self, class_name: str = "object") -> dict[str, Any] | None:
        """The reference statistics normalized fusion uses for ``class_name`` (None: raw fusion)."""
        stats = self._fusion_stats(class_name)
        return None if stats is None else stats.as_dict()

    def calibrate(self, images: Sequence[Any] | None = None, class_name: str = "object", fpr: float = 0.01,
                  max_leave_one_out: int = LEAVE_ONE_OUT_REFERENCES) -> Thresholds:
        """Set image and pixel thresholds at false-positive rate ``fpr`` from normal images.

        ``images``: extra normal images scored as they are.  ``None``: leave-one-out over
        the fitted references (at most ``max_leave_one_out`` of those kept at fit time):
        each one's visual part against the other references was computed at fit time
        from a coreset computed once; its zero-shot part comes from one pass per class.
        No model run per left-out reference, no coreset per left-out reference.
        """
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        if trait(self.method, "mutual"):
            raise ValueError(f"{self.method.name} scores depend on the images scored together, so thresholds "
                             "from other images do not carry over: it cannot be calibrated")
        self.thresholds = None
        if images is not None:
            if not images:
                raise ValueError("calibrate needs at least one normal image")
            results = self.predict(images, class_name)
            scores = np.array([r.score for r in results])
            maxima = np.array([r.anomaly_map.max() for r in results])
            source = "calibration images"
        else:
            if getattr(self, "refiner", None) is not None:
                raise ValueError("leave-one-out calibration scores maps without the image pass refinement needs: "
                                 "with refine, calibrate on normal images (calibrate(images); CLI: --calibrate DIR)")
            if len(self.normals) < 2:
                raise ValueError("leave-one-out calibration needs at least 2 normal references (fit_normals)")
            if not self._loo.chosen:
                raise ValueError("leave-one-out calibration needs references kept at fit time "
                                 "(fit_normals with max_leave_one_out > 0)")
            scores, maxima = self._leave_one_out(class_name, max_leave_one_out)
            source = "leave-one-out over the references"
        self.thresholds = Thresholds(float(np.quantile(scores, 1 - fpr, method="higher")),
                                     float(np.quantile(maxima, 1 - fpr, method="higher")), fpr, len(scores), source)
        return self.thresholds

    def _leave_one_out(self, class_name: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Per kept reference: its score and map maximum with the others as references.
        A tiled reference takes its highest tile score and tile-map maximum."""
        parts = self._reference_parts(class_name)
        refs = self.method.export_bank()
        subset = list(self._loo.units)
        visual = refs.loo_visual[subset]
        image = None if refs.loo_image is None else refs.loo_image[subset]
        patch, unit_scores, normalized = fuse(parts.language, parts.global_scores, visual, image, parts.stats,
                                              self.method.peak_of_visual)
        with torch.inference_mode():
            maps = self.method.finish(patch.view(-1, *self.backbone.grid).to(self.backbone.device), normalized)
        maps = maps.float().cpu()
        scores, maxima = [], []
        for (width, height), group in zip(self._loo.sizes[:limit], self._loo.groups[:limit]):
            g = list(group)  # a list: a tuple would index several dimensions
            scores.append(float(unit_scores[g].max()))
            if len(g) == 1:  # as predict: the map resized to the image, then its maximum
                full = F.interpolate(maps[g[0]][None, None], size=(height, width), mode="bilinear",
                                     align_corners=False)
                maxima.append(float(full.clamp(0, 1).max()))
            else:  # tiles: the largest tile maximum (the blend cannot exceed it)
                maxima.append(float(maps[g].clamp(0, 1).max()))
        return np.array(scores), np.array(maxima)


def _leave_one_out_references(chosen: list[int], sizes: list[tuple[int, int]], groups: list[list[int]],
                               zero_shot: ZeroShotFeatures | None) -> LeaveOneOutReferences:
    """Rows of ``zero_shot`` (units in increasing order) rearranged in ``chosen`` order,
    each reference's tiles together."""
    units = [u for i in chosen for u in groups[i]]
    position = {u: k for k, u in enumerate(sorted(units))}
    local_groups, start = [], 0
    for i in chosen:
        local_groups.append(tuple(range(start, start + len(groups[i]))))
        start += len(groups[i])
    features = None if zero_shot is None else zero_shot.select([position[u] for u in units])
    return LeaveOneOutReferences(tuple(chosen), tuple(sizes), tuple(local_groups), tuple(units), features)


def _source_mode(image: Any) -> str | None:
    """The stored mode of a path input (without decoding), of a PIL image, else None."""
    if isinstance(image, Image.Image):
        return image.mode
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return im.mode
        except Exception:  # noqa: BLE001 - load_image already reported unreadable files
            return None
    return None
