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

Version 2 (``--weights mini-v2``, architecture :data:`MODEL_NAME_V2`,
``shipped/alfa-mini-clip-v2.json``) has a real CLIP's patch grid (15 x 15: 120 px
images, 8 px patches) and is trained on texture classes too (docs/mini_clip_v2.md).
It loads through the same path; until its weights file is shipped, asking for it
is a one-line :class:`~alfa_ad.model.weights.WeightsUnavailableError`.
"""

from __future__ import annotations

from pathlib import Path

from .names import MINI_MODEL, MINI_V2_MODEL

MODEL_NAME = MINI_MODEL
MODEL_NAME_V2 = MINI_V2_MODEL
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
CONFIG_FILE = SHIPPED_DIR / f"{MODEL_NAME}.json"
CONFIG_FILE_V2 = SHIPPED_DIR / f"{MODEL_NAME_V2}.json"
WEIGHTS_FILE = SHIPPED_DIR / "mini_clip.safetensors"
WEIGHTS_FILE_V2 = SHIPPED_DIR / "mini_clip_v2.safetensors"
LABEL = "mini-CLIP (trained here on synthetic scenes) - not a real CLIP"


def register_config() -> None:
    """Make :data:`MODEL_NAME` and :data:`MODEL_NAME_V2` known to open_clip (idempotent)."""
    import open_clip

    known = open_clip.list_models()
    for name, config in ((MODEL_NAME, CONFIG_FILE), (MODEL_NAME_V2, CONFIG_FILE_V2)):
        if name not in known:
            open_clip.add_model_config(config)


def is_mini(model_name: str | None) -> bool:
    """Whether ``model_name`` is a mini-CLIP architecture (its outputs carry :data:`LABEL`)."""
    return model_name in (MODEL_NAME, MODEL_NAME_V2)


def weights_file(weights: str = "mini") -> Path:
    """The shipped weights of ``--weights mini`` or ``mini-v2``; a one-line error when missing."""
    from .weights import WeightsUnavailableError

    if weights == "mini-v2":
        if not WEIGHTS_FILE_V2.is_file():
            raise WeightsUnavailableError(
                f"{WEIGHTS_FILE_V2}: mini-CLIP v2 weights are not shipped yet (train them with the command in "
                "docs/mini_clip_v2.md, or use --weights mini)")
        return WEIGHTS_FILE_V2
    if weights != "mini":
        raise ValueError(f"not a mini-CLIP: --weights {weights!r} (mini or mini-v2)")
    if not WEIGHTS_FILE.is_file():
        raise WeightsUnavailableError(
            f"{WEIGHTS_FILE}: mini-CLIP weights not found (they ship in the repository; restore the file or "
            "retrain with the command in docs/mini_clip.md)")
    return WEIGHTS_FILE


def checkpoint_for(weights: str) -> tuple[Path, str]:
    """``(weights file, open_clip model name)`` of ``--weights mini`` / ``mini-v2``."""
    return weights_file(weights), MODEL_NAME_V2 if weights == "mini-v2" else MODEL_NAME
