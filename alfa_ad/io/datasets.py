"""Finding images: an MVTec-AD-layout root, one class folder, or a plain folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import IMAGE_EXTENSIONS, ImageLoadError, InputError, load_mask


@dataclass(frozen=True)
class Sample:
    """One test image and what is known about it."""

    path: Path
    class_name: str
    defect_type: str  # "good", a defect type, or "" for unlabelled images
    label: int | None  # 0 normal, 1 anomalous, None unknown
    mask_path: Path | None  # ground-truth mask, when the layout has one
    unique_stem: bool = True  # False when another image in the folder has the same stem

    @property
    def key(self) -> str:
        """Relative identifier ``class/type/stem`` used for output file names
        (``stem.ext`` when two images of a folder share a stem)."""
        name = self.path.stem if self.unique_stem else self.path.name
        return "/".join([self.class_name, self.defect_type or "images", name])


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _shared_stems(paths: list[Path]) -> set[str]:
    stems = [p.stem for p in paths]
    return {s for s in stems if stems.count(s) > 1}


def is_class_folder(folder: Path) -> bool:
    return (folder / "test").is_dir()


def class_samples(folder: Path, class_name: str | None = None) -> tuple[list[Sample], list[str]]:
    """Test samples of one MVTec-layout class folder, and warnings (e.g. missing masks)."""
    name = class_name or folder.name
    samples: list[Sample] = []
    warnings: list[str] = []
    for type_dir in sorted(p for p in (folder / "test").iterdir() if p.is_dir()):
        defect = type_dir.name
        images = _images(type_dir)
        shared = _shared_stems(images)
        for img in images:
            mask = None
            if defect != "good":
                candidate = folder / "ground_truth" / defect / f"{img.stem}_mask.png"
                if candidate.is_file():
                    mask = candidate
                else:
                    warnings.append(f"{img}: defect image without mask ({candidate.name} missing); "
                                    "counted for image metrics only")
            samples.append(Sample(img, name, defect, 0 if defect == "good" else 1, mask, img.stem not in shared))
    return samples, warnings


VISA_SPLIT = Path("split_csv") / "1cls.csv"


def is_visa_root(root: Path) -> bool:
    return (root / VISA_SPLIT).is_file()


def _visa_rows(root: Path) -> list[dict[str, str]]:
    import csv

    path = root / VISA_SPLIT
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read VisA split file ({exc})") from exc
    need = {"object", "split", "label", "image", "mask"}
    if not rows or not need <= set(rows[0]):
        raise InputError(f"{path}: not a VisA split file (needs columns {', '.join(sorted(need))})")
    for line, r in enumerate(rows, start=2):
        if None in r or any(v is None for v in r.values()):
            raise InputError(f"{path}: line {line} has {len([v for v in r.values() if v is not None])} fields, "
                             f"the header has {len(rows[0]) - (None in rows[0])}")
    return rows


VISA_NORMAL_LABELS = ("normal", "good", "0", "ok")
VISA_ANOMALOUS_LABELS = ("anomaly", "anomalous", "abnormal", "bad", "defect", "defective", "1", "ng")


def _visa_label(value: str | None) -> int | None:
    """0 normal, 1 anomalous, None when the label is empty or unknown."""
    text = (value or "").strip().lower()
    if text in VISA_NORMAL_LABELS:
        return 0
    if text in VISA_ANOMALOUS_LABELS:
        return 1
    return None


def _split(row: dict[str, str]) -> str:
    return (row.get("split") or "").strip().lower()


def visa_samples(root: Path, classes: Sequence[str] | None) -> tuple[dict[str, list[Sample]], list[str]]:
    """Test samples of a VisA release root, as listed in ``split_csv/1cls.csv``.

    Fields are stripped and the split is matched case-insensitively (``Test`` is
    ``test``); a row with an empty or unknown label is reported and skipped.
    """
    rows = _visa_rows(root)
    available = list(dict.fromkeys(r["object"].strip() for r in rows))
    if classes:
        unknown = [c for c in classes if c not in available]
        if unknown:
            raise InputError(f"{root}: missing class {', '.join(unknown)}; available: {', '.join(available)}")
    out: dict[str, list[Sample]] = {c: [] for c in (classes or available)}
    warnings: list[str] = []
    for line, r in enumerate(rows, start=2):
        obj = r["object"].strip()
        if obj not in out or _split(r) != "test":
            continue
        image = (r.get("image") or "").strip()
        if not image:
            raise InputError(f"{root / VISA_SPLIT}: line {line} ({obj!r}) lacks its image field")
        label = _visa_label(r.get("label"))
        if label is None:
            warnings.append(f"{root / VISA_SPLIT}: line {line} ({image}) has label {r.get('label')!r}, neither normal "
                            f"({'/'.join(VISA_NORMAL_LABELS)}) nor anomalous; row skipped")
            continue
        mask_field = (r.get("mask") or "").strip()
        mask = root / mask_field if label and mask_field else None
        if label and (mask is None or not mask.is_file()):
            warnings.append(f"{root / image}: defect image without mask; counted for image metrics only")
            mask = None
        out[obj].append(Sample(root / image, obj, "anomaly" if label else "good", label, mask, False))
    return out, warnings


def train_images(root: str | Path, class_name: str) -> list[Path]:
    """Normal training images of a class: ``<class>/train/good`` (MVTec) or the VisA train split."""
    root = Path(root)
    if is_visa_root(root):
        rows = [r for r in _visa_rows(root) if r["object"].strip() == class_name and _split(r) == "train"]
        if any(not (r.get("image") or "").strip() for r in rows):
            raise InputError(f"{root / VISA_SPLIT}: a train row of {class_name!r} lacks its image field")
        return sorted(root / r["image"].strip() for r in rows)
    folder = root if is_class_folder(root) and root.name == class_name else root / class_name
    good = folder / "train" / "good"
    if not good.is_dir():
        raise InputError(f"{good}: no normal training images for class {class_name!r}")
    return _images(good)


def discover(root: str | Path, classes: Sequence[str] | None = None, plain_class: str = "object"
             ) -> tuple[dict[str, list[Sample]], list[str]]:
    """Map class name -> samples for ``root``.

    * ``root/<class>/test/<type>/*`` (MVTec AD layout): one entry per class folder,
      restricted to ``classes`` when given;
    * ``root/test/<type>/*``: ``root`` itself is one class folder;
    * ``root/split_csv/1cls.csv``: a VisA release (test split of that file);
    * otherwise a plain folder of images (unlabelled), class ``plain_class``;
    * a single image file: that image alone, unlabelled, class ``plain_class``.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: data folder not found")
    if not root.is_dir():
        if root.suffix.lower() in IMAGE_EXTENSIONS:  # one image: a plain "folder" of one
            name = classes[0] if classes else plain_class
            return {name: [Sample(root, name, "", None, None)]}, []
        raise InputError(f"{root}: neither a folder nor an image file ({', '.join(IMAGE_EXTENSIONS)})")
    warnings: list[str] = []
    if is_visa_root(root):
        return visa_samples(root, classes)
    if is_class_folder(root):
        found = {root.name: root}
    else:
        found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_class_folder(p)}
    if found:
        if classes:
            unknown = [c for c in classes if c not in found]
            if unknown:
                raise InputError(f"{root}: missing class folder {', '.join(unknown)}; available: {', '.join(found)}")
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
    shared = _shared_stems(images)
    return {name: [Sample(p, name, "", None, None, p.stem not in shared) for p in images]}, warnings


def ground_truth_mask(sample: Sample, size: tuple[int, int], warnings: list[str]) -> np.ndarray | None:
    """Ground truth at the image's (W, H) size: zeros for good images, None when unknown; a
    mask that cannot be read or does not match the image adds a warning and gives None."""
    if sample.label == 0:
        return np.zeros((size[1], size[0]), dtype=bool)
    if sample.mask_path is None:
        return None
    try:
        mask = load_mask(sample.mask_path)
    except ImageLoadError as exc:
        warnings.append(f"{exc}; image counted for image metrics only")
        return None
    if mask.shape != (size[1], size[0]):
        warnings.append(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{size[0]}x{size[1]}; image counted for image metrics only")
        return None
    return mask
