"""A vision-only backbone: a timm Vision Transformer (DINOv2 first of all), for the methods
that read no prompt (``patchknn``, AnomalyDINO's setting, and ``musc``).

Named ``timm:<timm model>[@<side>]`` wherever a model name is taken (``--model``,
``Detector(model=...)``, a run's record), e.g. ``timm:vit_small_patch14_dinov2@448``: the
timm architecture built at ``side`` x ``side`` pixels (default :data:`DEFAULT_SIDE`,
AnomalyDINO's 448; a multiple of the patch size).  Weights come only from a local file
(``--checkpoint``; DINOv2's own ``dinov2_vits14_pretrain.pth`` layout or timm's, converted
by timm's ``checkpoint_filter_fn``, read with ``weights_only=True`` or as safetensors) or
are seeded random (``--weights random``, for tests); nothing is downloaded, and without a
file the error is one line saying how to give one.

The object offers the image half of :class:`~alfa_ad.model.backbone.ClipBackbone`'s
interface (``tokens``, ``penultimate_with``, ``global_embedding``, ``patch_tokens``,
``head``, ``depth``, ``grid``, ``image_size``, ``preprocess``) so the patch methods, the
few-shot scorers and region refinement run on it unchanged.  Register tokens (the
``reg4`` models) take part in attention but are dropped from every returned token
sequence, which is therefore ``[class, patches...]`` as for CLIP.  The "head" is the final
layer norm (there is no joint text space); ``has_text`` is False and a method that reads
prompts is refused with one line (:class:`~alfa_ad.detector.Detector`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..io.paths import default_cache_dir
from .backbone import auto_device, tensor_digest
from .names import TIMM_PREFIX
from .preprocess import Box, to_model_input
from .state_dict import read_state_dict
from .weights import WeightsInfo, WeightsUnavailableError, sha256_file

DEFAULT_SIDE = 448  # AnomalyDINO's default resolution (the shorter side; square here)


def parse_timm_name(name: str) -> tuple[str, int]:
    """``"timm:vit_small_patch14_dinov2@448"`` -> ``("vit_small_patch14_dinov2", 448)``."""
    body = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    arch, _, side = body.partition("@")
    if not arch:
        raise ValueError(f"model {name!r}: give a timm architecture after {TIMM_PREFIX!r}, "
                         "e.g. timm:vit_small_patch14_dinov2")
    try:
        size = int(side) if side else DEFAULT_SIDE
    except ValueError:
        raise ValueError(f"model {name!r}: the input side after '@' must be an integer, got {side!r}") from None
    if size < 14:
        raise ValueError(f"model {name!r}: input side {size} is too small")
    return arch, size


def _build(arch: str, side: int):
    """timm's ``arch`` at ``side`` pixels, uninitialised weights left random (seeded by the caller)."""
    try:
        import timm
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise ImportError('timm models need timm: pip install "alfa-ad[timm]"') from None

    if arch not in timm.list_models():
        raise ValueError(f"unknown timm model {arch!r}; see timm.list_models('*dinov2*')")
    try:
        model = timm.create_model(arch, pretrained=False, img_size=side, num_classes=0)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"timm model {arch!r} at {side} px: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise ValueError(f"timm model {arch!r}: only class-token Vision Transformers are supported")
    patch = model.patch_embed.patch_size[0]
    if side % patch:
        raise ValueError(f"timm model {arch!r}: input side {side} is not a multiple of its patch size {patch}")
    return model


def _load(model, path: Path, name: str) -> None:
    """A local state dict (safetensors, or torch with ``weights_only=True``) through timm's
    converter (DINOv2's original layout, positional embeddings resampled to the input side)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(read_state_dict(path), model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # no classifier (num_classes=0)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the culprit named
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsUnavailableError(f"{path}: cannot load as {name} checkpoint ({msg[:300]})") from exc


def load_timm_backbone(name: str, *, checkpoint: str | Path | None, weights: str, seed: int,
                       device: str | None, half: bool | None) -> "TimmVitBackbone":
    """The backbone ``name`` (``timm:<arch>[@<side>]``) from a local checkpoint, or seeded
    random weights for ``weights="random"``; any other case is a one-line error."""
    arch, side = parse_timm_name(name)
    canonical = f"{TIMM_PREFIX}{arch}@{side}"
    if checkpoint is None and weights != "random":
        raise WeightsUnavailableError(
            f"{canonical}: timm weights are read from a local file only; pass --checkpoint FILE (e.g. DINOv2's "
            "dinov2_vits14_pretrain.pth or a timm .safetensors), or --weights random for a smoke test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(arch, side)
    if checkpoint is None:
        return TimmVitBackbone(model, WeightsInfo(canonical, "random", f"seed {seed}"), device, half)
    path = Path(checkpoint)
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: checkpoint file not found")
    _load(model, path, canonical)
    digest = sha256_file(path, default_cache_dir())
    info = WeightsInfo(canonical, "checkpoint", f"{path.name}, sha256 {digest[:12]}", str(path), digest)
    return TimmVitBackbone(model, info, device, half)


class TimmVitBackbone:
    """A timm ViT with the image half of ClipBackbone's interface (module docstring)."""

    has_text = False

    def __init__(self, vit: torch.nn.Module, weights: WeightsInfo, device: str | torch.device | None = None,
                 half: bool | None = None) -> None:
        self.device = auto_device(str(device) if device is not None else None)
        half = self.device.type == "cuda" if half is None else half
        self.dtype = torch.float16 if half else torch.float32
        self.vit = vit.to(self.device, self.dtype).eval()
        self.weights = weights
        self.image_size = tuple(int(s) for s in vit.patch_embed.img_size)
        self.grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        self.prefix = int(vit.num_prefix_tokens)  # class token + register tokens
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self._fingerprint: str | None = None

    @property
    def visual_fingerprint(self) -> str:
        """The weights file's SHA-256, else a digest of every tensor's name, shape and bytes."""
        if self.weights.sha256:
            return f"file-sha256:{self.weights.sha256}"
        if self._fingerprint is None:
            self._fingerprint = "blake2b:" + tensor_digest(sorted(self.vit.state_dict().items()))
        return self._fingerprint

    fingerprint = visual_fingerprint  # what caches key on; there is no text tower

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.vit

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def encode_text(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        raise ValueError(f"{self.weights.model_name} has no text tower: prompts cannot be encoded "
                         "(use a method that reads no prompt: patchknn or musc)")

    def preprocess(self, images: Sequence[Image.Image], boxes: Sequence[Box | None] | None = None) -> torch.Tensor:
        """As ClipBackbone's: crop, bicubic antialiased resize to the model size, normalise."""
        return to_model_input(images, boxes, self.image_size, self.mean, self.std, self.device, self.dtype)

    def _public(self, x: torch.Tensor) -> torch.Tensor:
        """``[class, registers..., patches]`` -> ``[class, patches]``."""
        return x if self.prefix == 1 else torch.cat([x[:, :1], x[:, self.prefix:]], dim=1)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class, register and patch tokens after the positional embedding, before ``norm_pre``."""
        return self.vit._pos_embed(self.vit.patch_embed(pixels.to(self.device, self.dtype)))

    def penultimate_with(self, tokens: torch.Tensor, capture: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last block's input (registers kept) and the outputs of blocks ``capture``
        (each at most ``depth - 2``; registers dropped)."""
        blocks = self.vit.blocks
        bad = [i for i in capture if not 0 <= i <= len(blocks) - 2]
        if bad:
            raise ValueError(f"layers {bad} out of range 0..{len(blocks) - 2}")
        x = self.vit.norm_pre(tokens)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(blocks[:-1]):
            x = block(x)
            if i in capture:
                outputs[i] = self._public(x)
        return x, [outputs[i] for i in capture]

    def head(self, cls: torch.Tensor) -> torch.Tensor:
        """The final layer norm (float32 out); DINOv2's class embedding."""
        return self.vit.norm(cls).float()

    def patch_tokens(self, last: torch.Tensor) -> torch.Tensor:
        """The final layer norm of the last block's patch tokens ``(B, P, W)``, as AnomalyDINO reads them."""
        return self.vit.norm(last[:, 1:]).float()

    def global_embedding(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block on ``z``: ``(class embedding (B, W), last tokens [class, patches])``."""
        out = self._public(self.vit.blocks[-1](z))
        return self.head(out[:, 0]), out
