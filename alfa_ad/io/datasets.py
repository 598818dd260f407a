"""Finding images: an MVTec-AD-layout root, one class folder, or a plain folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .images import IMAGE_EXTENSIONS, InputError


@dataclass(frozen=True)
class Sample:
    """One test image and what is known about it."""

    path: Path
    class_name: str
    defect_type: str  # "good", a defect type, or "" for unlabelled images
    label: int | None  # 0 normal, 1 anomalous, None unknown
    mask_path: Path | None  # ground-truth mask, when the layout has one

    @property
    def key(self) -> str:
        """Relative identifier ``class/type/stem`` used for output file names."""
        parts = [self.class_name, self.defect_type or "images", self.path.stem]
        return "/".join(parts)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def is_class_folder(folder: Path) -> bool:
    return (folder / "test").is_dir()


def class_samples(folder: Path, class_name: str | None = None) -> tuple[list[Sample], list[str]]:
    """Test samples of one MVTec-layout class folder, and warnings (e.g. missing masks)."""
    name = class_name or folder.name
    samples: list[Sample] = []
    warnings: list[str] = []
    for type_dir in sorted(p for p in (folder / "test").iterdir() if p.is_dir()):
        defect = type_dir.name
        for img in _images(type_dir):
            mask = None
            if defect != "good":
                candidate = folder / "ground_truth" / defect / f"{img.stem}_mask.png"
                if candidate.is_file():
                    mask = candidate
                else:
                    warnings.append(f"{img}: defect image without mask ({candidate.name} missing); "
                                    "counted for image metrics only")
            samples.append(Sample(img, name, defect, 0 if defect == "good" else 1, mask))
    return samples, warnings


def discover(root: str | Path, classes: Sequence[str] | None = None, plain_class: str = "object"
             ) -> tuple[dict[str, list[Sample]], list[str]]:
    """Map class name -> samples for ``root``.

    * ``root/<class>/test/<type>/*`` (MVTec AD layout): one entry per class folder,
      restricted to ``classes`` when given;
    * ``root/test/<type>/*``: ``root`` itself is one class folder;
    * otherwise a plain folder of images (unlabelled), class ``plain_class``.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: data folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    warnings: list[str] = []
    if is_class_folder(root):
        found = {root.name: root}
    else:
        found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_class_folder(p)}
    if found:
        if classes:
            unknown = [c for c in classes if c not in found]
            if unknown:
                raise InputError(f"{root}: unknown class {', '.join(unknown)}; available: {', '.join(found)}")
            found = {c: found[c] for c in classes}
        out = {}
        for name, folder in found.items():
            samples, warn = class_samples(folder, name)
            out[name] = samples
            warnings += warn
        return out, warnings
    images = _images(root)
    if not images:
        raise InputError(f"{root}: no images found (expected <class>/test/<type>/ folders or image files)")
    if classes and len(classes) > 1:
        raise InputError(f"{root}: a plain folder of images holds one class; got --classes {','.join(classes)}")
    name = classes[0] if classes else plain_class
    return {name: [Sample(p, name, "", None, None) for p in images]}, warnings
