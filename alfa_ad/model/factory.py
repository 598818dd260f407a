"""Building a :class:`~alfa_ad.model.backbone.ClipBackbone`: pretrained tags, local
checkpoint files (with the manifest ``alfa-ad weights download`` writes), seeded
random weights and the planted test model."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..io.paths import default_cache_dir
from .backbone import ClipBackbone
from .state_dict import read_state_dict
from .names import DEFAULT_MODEL, DEFAULT_PRETRAINED, MINI_WEIGHTS, TIMM_PREFIX, WEIGHT_CHOICES
from .weights import (WeightsInfo, WeightsUnavailableError, fetch, known_ref, pretrained_ref, read_manifest,
                      sha256_file)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def _no_init():
    """Build modules without initialising their weights (``torch.nn.init`` becomes a no-op):
    the weights are overwritten by a checkpoint anyway, and untouched memory is never
    paged in, so building costs neither the time nor the RAM of a random initialisation."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}

    def skip(tensor, *args, **kwargs):
        return tensor

    try:
        for name in saved:
            setattr(torch.nn.init, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _create(model_name: str, initialise: bool = True):
    """open_clip's architecture ``model_name`` and its tokenizer; ``initialise=False``
    leaves the weights uninitialised (they must then all be loaded)."""
    import open_clip

    from .mini import register_config

    register_config()  # the mini-CLIP's architecture is known by name
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}; see open_clip.list_models() (default {DEFAULT_MODEL})"
        )
    quiet = logging.getLogger()  # open_clip logs "No pretrained weights loaded" on the root logger
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.nullcontext() if initialise else _no_init():
            model = open_clip.create_model(model_name, pretrained=None)
    finally:
        quiet.setLevel(level)
    return model, open_clip.get_tokenizer(model_name)


def _load_file(clip, path: Path, model_name: str) -> None:
    """Load a weights file strictly, replacing the module's tensors by the file's (``assign``:
    no copy, so memory-mapped weights stay mapped), with open_clip's conversions of
    third-party and older layouts."""
    from open_clip import factory as ocf

    try:
        state = read_state_dict(path)
        state = ocf.convert_state_dict(clip, state)
        if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
            state = ocf.convert_to_custom_text_state_dict(state)
        if "logit_scale" in state and clip.logit_scale.ndim != state["logit_scale"].ndim:
            state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
        if getattr(clip, "logit_bias", None) is not None and "logit_bias" in state and \
                clip.logit_bias.ndim != state["logit_bias"].ndim:
            state["logit_bias"] = state["logit_bias"].reshape(clip.logit_bias.shape)
        state.pop("text.transformer.embeddings.position_ids", None)
        ocf.resize_pos_embed(state, clip)
        ocf.resize_text_pos_embed(state, clip)
        expected = clip.state_dict()
        wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        if wrong:
            raise ValueError(f"size mismatch for {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                             f"{tuple(expected[wrong[0]].shape)} in the model")
        clip.load_state_dict(state, strict=True, assign=True)
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
    initialisation: smoke tests only), ``"planted"`` (the hand-constructed test model
    of :mod:`alfa_ad.model.planted`) or ``"mini"`` / ``"mini-v2"`` (the mini-CLIP trained
    here on synthetic scenes, :mod:`alfa_ad.model.mini`: the shipped file loaded as a
    checkpoint; not a real CLIP).  ``checkpoint`` loads a local state-dict file
    (``.safetensors``, or a torch file with ``weights_only=True``) into ``model_name``'s
    architecture (or the one its manifest names) and overrides ``weights``.  A
    ``model_name`` ``timm:<arch>[@<side>]`` is a vision-only timm ViT (DINOv2;
    :mod:`alfa_ad.model.timm_vit`): a checkpoint file or ``weights="random"`` only.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if model_name and model_name.startswith(TIMM_PREFIX):  # a vision-only timm ViT (DINOv2)
        from .timm_vit import load_timm_backbone

        if checkpoint is None and weights not in ("random", "pretrained"):
            raise ValueError(f"--weights {weights} is a CLIP; {model_name} takes --checkpoint FILE or --weights random")
        return load_timm_backbone(model_name, checkpoint=checkpoint, weights=weights, seed=seed, device=device,
                                  half=half)
    mini = checkpoint is None and weights in MINI_WEIGHTS
    if mini:
        from .mini import checkpoint_for

        if model_name not in (None, DEFAULT_MODEL, MINI_WEIGHTS[weights]):
            raise ValueError(f"--weights {weights} is the {MINI_WEIGHTS[weights]} architecture, not {model_name!r}")
        checkpoint, model_name = checkpoint_for(weights)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsUnavailableError(f"{path}: checkpoint file not found")
        model_name = checkpoint_model(path, model_name)
        clip, tokenizer = _create(model_name, initialise=False)
        _load_file(clip, path, model_name)
        manifest = read_manifest(path) or {}
        _set_normalisation(clip, manifest.get("mean"), manifest.get("std"))
        digest = sha256_file(path, default_cache_dir())
        source = "mini" if mini or model_name in MINI_WEIGHTS.values() else "checkpoint"  # the mini-CLIP says what it is
        info = WeightsInfo(model_name, source, f"{path.name}, sha256 {digest[:12]}", str(path), digest)
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
    ref = known_ref(model_name, pretrained)  # the usual models: no open_clip import before the weights are found
    if ref is None:
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models() (default {DEFAULT_MODEL})")
        ref = pretrained_ref(model_name, pretrained)
    path = fetch(ref)  # one-line WeightsUnavailableError when not here and not reachable
    clip, tokenizer = _create(model_name, initialise=False)
    _load_file(clip, path, model_name)
    _set_normalisation(clip, ref.mean, ref.std)
    digest = sha256_file(path, default_cache_dir())
    info = WeightsInfo(model_name, "pretrained", pretrained, str(path), digest)
    return ClipBackbone(clip, tokenizer, info, device, half)
