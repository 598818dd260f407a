"""How closely an exported backend reproduces the torch model on given images
(``alfa-ad export`` measures it after writing a file and records it in the manifest)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from ..registry import trait

CHECK_IMAGES = 8  # images an export is checked on when none are given


class Agreement(NamedTuple):
    """An exported backend against the detector's own method on the same batch."""

    images: int
    max_score_difference: float
    max_map_difference: float
    spearman: float | None  # rank correlation of the image scores (None: fewer than 3 images or constant scores)
    checked_on: str  # where the images came from

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()

    def describe(self) -> str:
        rho = "n/a" if self.spearman is None else f"{self.spearman:.3f}"
        return (f"max |score difference| {self.max_score_difference:.2e}, max |map difference| "
                f"{self.max_map_difference:.2e}, Spearman {rho} on {self.images} images ({self.checked_on})")


def check_images(data: Path | None = None, count: int = CHECK_IMAGES) -> tuple[list[Any], str]:
    """The first ``count`` images of the folder ``data`` (sorted), or ``count`` generated
    demo images (textures, half with a painted spot) when no folder is given."""
    from ..io.images import iter_image_files, load_image

    if data is not None:
        files = iter_image_files(data)[:count]
        if not files:
            raise ValueError(f"{data}: no images to check the export on")
        return [load_image(f) for f in files], str(data)
    from ..demo import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dataset(Path(tmp), n_good=count - count // 2, n_defect=count // 2, seed=0)
        files = sorted(p for p in root.rglob("*.png") if "ground_truth" not in p.parts)
        return [load_image(f) for f in files], "generated demo images"


def compare(reference, got, checked_on: str) -> Agreement:
    """The agreement of two ``BatchScores`` of the same batch (``reference``: the torch model)."""
    a, b = reference.scores.float().cpu().numpy(), got.scores.float().cpu().numpy()
    rho = None
    if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        from scipy.stats import spearmanr

        rho = float(spearmanr(a, b).statistic)
    return Agreement(len(a), float(np.abs(a - b).max()),
                     float((reference.maps.float().cpu() - got.maps.float().cpu()).abs().max()), rho, checked_on)


def measure_agreement(detector, backend, images: Sequence[Any], checked_on: str,
                      class_name: str = "object") -> Agreement:
    """Scores and maps of ``backend`` vs ``detector.method`` on ``images`` (one batch).  A
    method exported with its memory bank as an input (patchknn) and not fitted yet is fitted
    on the first half of ``images`` and compared on the rest."""
    images = list(images)
    if trait(detector.method, "bank_input") and detector.method.export_bank() is None:
        half = len(images) // 2
        if half < 1:
            raise ValueError(f"checking a {detector.method.name} export needs at least 2 images: references, then "
                             f"images to score; got {len(images)}")
        detector.fit_normals(images[:half], seed=0)
        images, checked_on = images[half:], f"{checked_on}; memory bank from the first {half}"
    pixels = detector.backbone.preprocess(images)
    text = detector.class_text(class_name)
    with torch.inference_mode():
        reference = detector.method(pixels, text)
    return compare(reference, backend(pixels, text), checked_on)
