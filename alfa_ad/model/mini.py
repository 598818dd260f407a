"""The mini-CLIP: a small open_clip CLIP trained here on procedural scenes.

It is a real, learned CLIP (contrastive training on synthetic image-caption
pairs, ``tools/mini_clip/train.py``), small enough to ship in the repository,
and *not* a real CLIP: every output made with it says so (:data:`LABEL`).
Its architecture is the open_clip model config ``shipped/alfa-mini-clip.json``,
registered with open_clip under :data:`MODEL_NAME`, so ``--weights mini`` and
``--model alfa-mini-clip --checkpoint FILE`` both load through
:func:`alfa_ad.model.factory.load_backbone`'s checkpoint path, like real weights.
The weights are fp16 safetensors (no pickle).  docs/mini_clip.md describes the
scenes, the training and the figures.
"""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = "alfa-mini-clip"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
CONFIG_FILE = SHIPPED_DIR / f"{MODEL_NAME}.json"
WEIGHTS_FILE = SHIPPED_DIR / "mini_clip.safetensors"
LABEL = "mini-CLIP (trained here on synthetic scenes) - not a real CLIP"


def register_config() -> None:
    """Make :data:`MODEL_NAME` known to open_clip (idempotent)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_FILE)


def weights_file() -> Path:
    """The shipped weights; a one-line error when the file is missing."""
    from .weights import WeightsUnavailableError

    if not WEIGHTS_FILE.is_file():
        raise WeightsUnavailableError(
            f"{WEIGHTS_FILE}: mini-CLIP weights not found (they ship in the repository; restore the file or "
            "retrain with the command in docs/mini_clip.md)")
    return WEIGHTS_FILE
