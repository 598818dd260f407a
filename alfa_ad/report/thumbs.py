"""Small JPEG copies of overlays and reference images for the report's gallery."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

ASSETS = "report_files"  # the report's own files, next to report.html
THUMB_WIDTH = 480


def thumb_path(out: Path, key: str) -> Path:
    return out / ASSETS / "thumbs" / f"{key}.jpg"


def save_thumbnail(image: Image.Image, dst: Path) -> None:
    """``image`` scaled to at most THUMB_WIDTH wide, as JPEG, written atomically."""
    im = image.convert("RGB")
    if im.width > THUMB_WIDTH:
        im = im.resize((THUMB_WIDTH, max(1, round(im.height * THUMB_WIDTH / im.width))), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    im.save(tmp, format="JPEG", quality=82)
    tmp.replace(dst)


def thumbnail(src: Path, dst: Path) -> bool:
    """Make ``dst`` from the image file ``src`` unless it is already newer; False if ``src`` is unreadable."""
    try:
        if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
            return True
        with Image.open(src) as im:
            save_thumbnail(im, dst)
        return True
    except OSError:
        return False
