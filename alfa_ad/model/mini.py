"""The mini-CLIP: a small open_clip CLIP trained here on procedural scenes.

It is a real, learned CLIP (contrastive training on synthetic image-caption
pairs, ``tools/mini_clip/train.py``), small enough to ship in the repository,
and *not* a real CLIP: every output made with it says so (:data:`LABEL`).
Its architecture is the open_clip model config ``weights/alfa-mini-clip.json``,
registered with open_clip under :data:`MODEL_NAME`, so
``--model alfa-mini-clip --checkpoint FILE`` loads any file of that architecture
through the same path as real weights.  The weights are fp16 safetensors (no
pickle).  docs/mini_clip.md describes the scenes, the training and the figures.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_NAME = "alfa-mini-clip"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CONFIG_FILE = WEIGHTS_DIR / f"{MODEL_NAME}.json"
WEIGHTS_FILE = WEIGHTS_DIR / "mini_clip.safetensors"
LABEL = "mini-CLIP (trained here on synthetic scenes) - not a real CLIP"


def register_config() -> None:
    """Make :data:`MODEL_NAME` known to open_clip (idempotent)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_FILE)


def is_mini(model_name: str) -> bool:
    return model_name == MODEL_NAME


def file_detail(path: Path) -> str:
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return f"{Path(path).name}, sha256 {h[:12]}"


def load_mini_clip(path: str | Path | None = None):
    """``(clip, tokenizer, WeightsInfo)`` of the shipped mini-CLIP (or ``path``)."""
    import open_clip

    from .backbone import WeightsInfo, WeightsUnavailableError

    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path}: mini-CLIP weights not found (they ship in the repository; restore the file or retrain "
            "with the command in docs/mini_clip.md)")
    register_config()
    try:  # a file path as ``pretrained``: open_clip's own loader (safetensors, or torch.load weights_only=True)
        clip = open_clip.create_model(MODEL_NAME, pretrained=str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the culprit named
        msg = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsUnavailableError(f"{path}: cannot load as {MODEL_NAME} ({msg})") from exc
    return clip, open_clip.get_tokenizer(MODEL_NAME), WeightsInfo(MODEL_NAME, "mini", file_detail(path))
