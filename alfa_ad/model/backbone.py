"""One place for everything that touches open_clip's CLIP.

The detector needs three things from CLIP, all exposed here:

* ``encode_text``: prompt embeddings;
* ``tokens``: the image tokens after patch + positional embedding (masked windows
  start from these);
* ``penultimate``: the token sequence entering the last transformer block, and
  ``global_embedding`` / ``head`` on top of it.

Local (per-window) embeddings are the aligners' job (:mod:`alfa_ad.aligners`).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch
from PIL import Image

from .preprocess import Box, to_model_input
from .weights import WeightsInfo


def auto_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """blake2b (16 bytes, hex) of each tensor's name, shape, dtype and float32 bytes, in order:
    the identity of weights that came from no file (an image tower's fingerprint)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in named:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().float().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ClipBackbone:
    """A CLIP model from open_clip plus its tokenizer and preprocessing constants."""

    has_text = True  # a text tower: prompts can be encoded (a timm ViT has none: model/timm_vit.py)

    def __init__(
        self,
        clip: torch.nn.Module,
        tokenizer,
        weights: WeightsInfo,
        device: str | torch.device | None = None,
        half: bool | None = None,
    ) -> None:
        self.device = auto_device(str(device) if device is not None else None)
        half = self.device.type == "cuda" if half is None else half
        self.dtype = torch.float16 if half else torch.float32
        self.clip = clip.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.weights = weights
        visual = self.clip.visual
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "transformer"):
            raise ValueError(f"{weights.model_name}: only ViT CLIP models with class-token pooling are supported")
        block = visual.transformer.resblocks[-1]
        if not isinstance(getattr(block, "attn", None), torch.nn.MultiheadAttention):
            raise ValueError(f"{weights.model_name}: the last vision block must use nn.MultiheadAttention")
        size = visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.grid = tuple(visual.grid_size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self._fingerprint: str | None = None
        self._visual_fingerprint: str | None = None

    @property
    def visual_fingerprint(self) -> str:
        """Identity of the image tower's weights (what an exported model was made from): the
        weights file's SHA-256 when the weights came from a file, else a blake2b digest of
        every ``visual.*`` tensor's name, shape and bytes (computed once: seconds for ViT-B)."""
        if self.weights.sha256:
            return f"file-sha256:{self.weights.sha256}"
        if self._visual_fingerprint is None:
            visual = [(n, t) for n, t in sorted(self.clip.state_dict().items()) if n.startswith("visual.")]
            self._visual_fingerprint = "blake2b:" + tensor_digest(visual)
        return self._visual_fingerprint

    # ------------------------------------------------------------------ text
    @property
    def fingerprint(self) -> str:
        """Identity of the text tower's weights (cache key for text embeddings).

        Weights from a file: the model name and the file's SHA-256 (itself remembered by
        file identity, so a warm start hashes nothing).  Otherwise a blake2b digest of
        every text-tower tensor's name, shape and bytes."""
        if self._fingerprint is None and self.weights.sha256:
            self._fingerprint = hashlib.blake2b(f"{self.weights.model_name}|file-sha256|{self.weights.sha256}".encode(),
                                                digest_size=16).hexdigest()
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(self.weights.model_name.encode())
            for name, t in sorted(self.clip.state_dict().items()):
                if name.startswith("visual."):
                    continue
                h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Raw (unnormalised) text embeddings ``(N, D)`` as float32 on CPU."""
        out = []
        for i in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(list(prompts[i : i + batch_size])).to(self.device)
            out.append(self.clip.encode_text(tokens).float().cpu())
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)

    @property
    def embed_dim(self) -> int:
        proj = self.clip.visual.proj
        return proj.shape[1] if proj is not None else self.clip.visual.transformer.width

    # ----------------------------------------------------------------- image
    def preprocess(self, images: Sequence[Image.Image], boxes: Sequence[Box | None] | None = None) -> torch.Tensor:
        """Crop (``boxes``, default whole images), resize in torch (bicubic, antialiased,
        no centre crop) to the model size and normalise: ``(B, 3, H, W)`` on the model's
        device and dtype (:mod:`alfa_ad.model.preprocess`)."""
        return to_model_input(images, boxes, self.image_size, self.mean, self.std, self.device, self.dtype)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class + patch tokens after positional embedding, before ``ln_pre``: ``(B, 1+P, W)``."""
        v = self.clip.visual
        x = v.conv1(pixels.to(self.device, self.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)

    def penultimate(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``ln_pre`` and every block but the last: the last block's input ``z^{L-1}``."""
        return self.penultimate_with(tokens, ())[0]

    @property
    def vision_tower(self) -> torch.nn.Module:
        """The image encoder as a module (what an export graph registers, so it sees the weights)."""
        return self.clip.visual

    @property
    def depth(self) -> int:
        """Number of vision transformer blocks."""
        return len(self.clip.visual.transformer.resblocks)

    def penultimate_with(self, tokens: torch.Tensor, capture: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like :meth:`penultimate`, also returning the outputs of blocks ``capture`` (0-based,
        each at most ``depth - 2``), in the order given."""
        v = self.clip.visual
        blocks = v.transformer.resblocks
        bad = [i for i in capture if not 0 <= i <= len(blocks) - 2]
        if bad:
            raise ValueError(f"memory-bank layers {bad} out of range 0..{len(blocks) - 2}")
        x = v.ln_pre(tokens)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(blocks[:-1]):
            x = block(x)
            if i in capture:
                outputs[i] = x
        return x, [outputs[i] for i in capture]

    def patch_tokens(self, last: torch.Tensor) -> torch.Tensor:
        """``ln_post`` of the last block's patch tokens (unprojected), as WinCLIP+ uses: ``(B, P, W)``."""
        return self.clip.visual.ln_post(last[:, 1:]).float()

    def head(self, cls: torch.Tensor) -> torch.Tensor:
        """``ln_post`` and the projection into the joint space (float32 out)."""
        v = self.clip.visual
        x = v.ln_post(cls)
        if v.proj is not None:
            x = x @ v.proj
        return x.float()

    def global_embedding(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finish the forward pass from ``z^{L-1}``: ``(image embedding (B, D), last tokens (B, 1+P, W))``."""
        out = self.clip.visual.transformer.resblocks[-1](z)
        return self.head(out[:, 0]), out
