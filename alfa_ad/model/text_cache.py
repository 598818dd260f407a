"""Disk cache of text embeddings (diskcache), keyed by model, weights identity and prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backbone import ClipBackbone


class TextEmbeddingCache:
    """Encodes prompts, reusing embeddings stored on disk; ``directory=None`` disables disk."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._disk = None
        if directory is not None:
            import diskcache

            self._disk = diskcache.Cache(str(Path(directory) / "text-embeddings"))
        self._memory: dict[str, np.ndarray] = {}
        self.encoded = 0  # prompts sent through the text encoder by this object

    @staticmethod
    def key(backbone: ClipBackbone, prompt: str) -> str:
        return f"{backbone.weights.model_name}|{backbone.fingerprint}|{prompt}"

    def encode(self, backbone: ClipBackbone, prompts: Sequence[str]) -> torch.Tensor:
        """Raw embeddings ``(N, D)`` float32 for ``prompts``, in order."""
        keys = [self.key(backbone, p) for p in prompts]
        found: dict[str, np.ndarray] = {}
        for k in keys:
            if k in self._memory:
                found[k] = self._memory[k]
            elif self._disk is not None:
                v = self._disk.get(k)
                if v is not None:
                    found[k] = v
        missing = [p for p, k in zip(prompts, keys) if k not in found]
        if missing:
            emb = backbone.encode_text(missing).numpy().astype(np.float32)
            self.encoded += len(missing)
            for p, e in zip(missing, emb):
                k = self.key(backbone, p)
                found[k] = e
                if self._disk is not None:
                    self._disk.set(k, e)
        self._memory.update(found)
        if not keys:
            return torch.zeros(0, backbone.embed_dim)
        return torch.from_numpy(np.stack([found[k] for k in keys]))

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
