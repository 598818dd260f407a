"""Building a :class:`~alfa_ad.model.backbone.ClipBackbone`: pretrained tags, local
checkpoint files (with the manifest ``alfa-ad weights download`` writes), seeded
random weights and the planted test model."""

from __future__ import annotations

from pathlib import Path

import torch

from ..io.paths import default_cache_dir
from .backbone import ClipBackbone
from .names import DEFAULT_MODEL, DEFAULT_PRETRAINED, WEIGHT_CHOICES
from .weights import (WeightsInfo, WeightsUnavailableError, fetch, pretrained_ref, read_manifest, sha256_file)


def _create(model_name: str):
    """open_clip's architecture ``model_name`` (randomly initialised) and its tokenizer."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() (default {DEFAULT_MODEL})"
        )
    return open_clip.create_model(model_name, pretrained=None), open_clip.get_tokenizer(model_name)


def _load_file(clip, path: Path, model_name: str) -> None:
    import open_clip

    try:
        open_clip.load_checkpoint(clip, str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the culprit named
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsUnavailableError(f"{path}: cannot load as {model_name} checkpoint ({msg[:300]})") from exc


def _set_normalisation(clip, mean, std) -> None:
    if mean and std:
        cfg = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
        cfg.update(mean=tuple(mean), std=tuple(std))
        clip.visual.preprocess_cfg = cfg


def checkpoint_model(checkpoint: str | Path, model_name: str | None) -> str:
    """The architecture for ``checkpoint``: ``model_name``, else its manifest's, else the default.

    A ``model_name`` that contradicts the manifest is an error naming both.
    """
    manifest = read_manifest(checkpoint) or {}
    recorded = manifest.get("model")
    if model_name and recorded and model_name != recorded:
        raise WeightsUnavailableError(f"{checkpoint}: its manifest says model {recorded!r}, but --model is "
                                      f"{model_name!r}; drop --model or pass --model {recorded}")
    return model_name or recorded or DEFAULT_MODEL


def load_backbone(
    model_name: str | None = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    *,
    checkpoint: str | Path | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    device: str | None = None,
    half: bool | None = None,
) -> ClipBackbone:
    """Build the backbone.

    ``weights``: ``"pretrained"`` (``model_name``/``pretrained`` from the local caches, or
    downloaded when the hub can be reached; offline, a one-line
    :class:`WeightsUnavailableError` within seconds), ``"random"`` (seeded random
    initialisation: smoke tests only), or ``"planted"`` (the hand-constructed test model
    of :mod:`alfa_ad.model.planted`).  ``checkpoint`` loads a local state-dict file
    (``.safetensors``, or a torch file with ``weights_only=True``) into ``model_name``'s
    architecture (or the one its manifest names) and overrides ``weights``.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsUnavailableError(f"{path}: checkpoint file not found")
        model_name = checkpoint_model(path, model_name)
        clip, tokenizer = _create(model_name)
        _load_file(clip, path, model_name)
        manifest = read_manifest(path) or {}
        _set_normalisation(clip, manifest.get("mean"), manifest.get("std"))
        digest = sha256_file(path, default_cache_dir())
        info = WeightsInfo(model_name, "checkpoint", f"{path.name}, sha256 {digest[:12]}", str(path), digest)
        return ClipBackbone(clip, tokenizer, info, device, half)
    model_name = model_name or DEFAULT_MODEL
    if weights == "planted":
        from .planted import build_planted_clip

        clip, tokenizer = build_planted_clip()
        info = WeightsInfo("planted-vit", "planted", "colour cue: red, green or blue paint")
        return ClipBackbone(clip, tokenizer, info, device, half)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip, tokenizer = _create(model_name)
        return ClipBackbone(clip, tokenizer, WeightsInfo(model_name, "random", f"seed {seed}"), device, half)
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models() (default {DEFAULT_MODEL})")
    ref = pretrained_ref(model_name, pretrained)
    path = fetch(ref)  # one-line WeightsUnavailableError when not here and not reachable
    clip, tokenizer = _create(model_name)
    _load_file(clip, path, model_name)
    _set_normalisation(clip, ref.mean, ref.std)
    digest = sha256_file(path, default_cache_dir())
    info = WeightsInfo(model_name, "pretrained", pretrained, str(path), digest)
    return ClipBackbone(clip, tokenizer, info, device, half)
