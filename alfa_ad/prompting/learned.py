"""Learned and imported prompt embeddings as one more prompt source (``--learned FILE``).

Two kinds of file are read:

* **learned** (written by ``alfa-ad learn-prompts``): a safetensors file with, per
  class, ``<class>/normal`` ``(P, D)`` and ``<class>/abnormal`` ``(Q, D)`` raw text
  embeddings (plus the context vectors ``<class>/context_normal``,
  ``<class>/context_abnormal``) and JSON metadata: model, weights label, text-tower
  fingerprint, weights file SHA-256, k, seed, image names, configuration.  It is
  refused, with one line, by a model whose weights differ;
* **plain** embeddings (learned elsewhere: AnomalyCLIP-style object-agnostic prompts,
  converted PromptAD checkpoints): a safetensors or torch file (read with
  ``weights_only=True``) holding ``normal`` ``(N, D)`` and ``abnormal`` ``(M, D)``
  float tensors for every class, and/or ``<class>/normal``, ``<class>/abnormal`` for
  one class (nested dicts ``{class: {normal, abnormal}}`` too); a PromptAD checkpoint's
  ``text_features`` ``(2, D)`` reads as one normal and one abnormal embedding.  A
  ``(D,)`` tensor is one embedding.  Nothing says which model made such a file, so it
  is not checked beyond its dimension; a warning and the run record say so.

Embeddings are raw (unnormalised) outputs of the text tower, like those of text
prompts.  The source names its entries ``learned:normal:<i>`` and
``learned:abnormal:<j>``; the detector takes their embeddings from
:attr:`~alfa_ad.prompting.base.PromptSet.embeddings` instead of encoding text.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .base import PromptSet

FORMAT = "alfa-ad learned prompts"
META_KEY = "alfa_ad_learned_prompts"
ALL = "*"  # plain files: the entry for every class
SOURCE_NAME = "learned"


class LearnedPromptsError(ValueError):
    """A learned-prompt file that cannot be used (message: one line naming the file)."""


@dataclass
class LearnedClass:
    normal: torch.Tensor  # (P, D) raw embeddings
    abnormal: torch.Tensor  # (Q, D)
    context_normal: torch.Tensor | None = None  # (P, n_ctx, W) learned context vectors
    context_abnormal: torch.Tensor | None = None


@dataclass
class LearnedPrompts:
    """Per class learned (or imported) embeddings; ``meta`` is None for a plain file."""

    classes: dict[str, LearnedClass]
    meta: dict[str, Any] | None = None
    path: str | None = None
    sha256: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def plain(self) -> bool:
        return self.meta is None

    @property
    def dim(self) -> int:
        return next(iter(self.classes.values())).normal.shape[-1]

    def for_class(self, class_name: str) -> LearnedClass | None:
        return self.classes.get(class_name) or self.classes.get(ALL)

    # -------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (whatever its extension); same content, same bytes."""
        from safetensors.torch import save

        from ..io.atomic import atomic_write_bytes

        tensors: dict[str, torch.Tensor] = {}
        for cls, e in self.classes.items():
            parts = {"normal": e.normal, "abnormal": e.abnormal, "context_normal": e.context_normal,
                     "context_abnormal": e.context_abnormal}
            for name, t in parts.items():
                if t is not None:
                    tensors[f"{cls}/{name}"] = t.detach().float().cpu().contiguous()
        meta = {META_KEY: json.dumps(self.meta, sort_keys=True)} if self.meta is not None else None
        return atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "LearnedPrompts":
        """Read a learned or plain embedding file (see the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise LearnedPromptsError(f"{path}: learned-prompt file not found")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        meta = None
        if data[:2] == b"PK" or data[:1] == b"\x80":
            tensors = _torch_tensors(path)
        else:
            tensors, header = _safetensors(path, data)
            raw = header.get(META_KEY)
            if raw is not None:
                try:
                    meta = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise LearnedPromptsError(f"{path}: unreadable learned-prompt metadata ({exc})") from None
                if meta.get("format") != FORMAT:
                    raise LearnedPromptsError(f"{path}: metadata is not of an alfa-ad learned-prompt file")
        classes = _classes(tensors, path, learned=meta is not None)
        return cls(classes, meta, str(path), digest)

    # -------------------------------------------------------------- checks
    def check(self, backbone) -> list[str]:
        """Refuse (one line) embeddings made with other weights or of another dimension;
        returns warnings (a plain file cannot be checked)."""
        weights = backbone.weights
        name = self.path or "learned prompts"
        if self.meta is not None:
            m = self.meta
            same = (m.get("model") == weights.model_name and m.get("text_fingerprint") == backbone.fingerprint
                    and not (m.get("weights_sha256") and weights.sha256 and m["weights_sha256"] != weights.sha256))
            if not same:
                theirs = _identity(m.get("model"), m.get("weights_source"), m.get("weights_detail"))
                ours = _identity(weights.model_name, weights.source, weights.detail)
                raise LearnedPromptsError(
                    f"{name}: learned with {theirs} (text fingerprint {str(m.get('text_fingerprint'))[:12]}), but this "
                    f"run uses {ours} (text fingerprint {backbone.fingerprint[:12]}); learn the prompts again with "
                    "these weights (alfa-ad learn-prompts)")
        if self.dim != backbone.embed_dim:
            raise LearnedPromptsError(f"{name}: embeddings have dimension {self.dim}, but {weights.model_name} "
                                      f"embeds text in {backbone.embed_dim} dimensions")
        self.warnings = [] if self.meta is not None else [
            f"{name}: plain embedding file without a model fingerprint; it cannot be checked that it was made "
            f"with {weights.model_name} ({weights.source} weights)"]
        return list(self.warnings)


def _identity(model, source, detail) -> str:
    """``ViT-B-16-plus-240 (random weights, seed 0)``."""
    return f"{model} ({source} weights{', ' + detail if detail else ''})"


def _safetensors(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LearnedPromptsError(f"{path}: neither a safetensors nor a torch tensor file ({msg[:200]})") from None
    return tensors, header.get("__metadata__") or {}


def _torch_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LearnedPromptsError(f"{path}: cannot read as a torch tensor file with weights_only=True "
                                  f"({msg[:200]})") from None
    if isinstance(obj, torch.Tensor):
        raise LearnedPromptsError(f"{path}: holds one bare tensor; expected a dict with 'normal' and 'abnormal'")
    if not isinstance(obj, Mapping):
        raise LearnedPromptsError(f"{path}: holds a {type(obj).__name__}; expected a dict of tensors")
    return _flatten(obj)


def _flatten(obj: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, torch.Tensor):
            out[key] = v
    return out


def _matrix(t: torch.Tensor, key: str, path: Path) -> torch.Tensor:
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] == 0 or not t.is_floating_point():
        raise LearnedPromptsError(f"{path}: {key!r} must be a float tensor of shape (N, D) or (D,), "
                                  f"got {t.dtype} {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise LearnedPromptsError(f"{path}: {key!r} holds NaN or infinite values")
    return t


def _classes(tensors: dict[str, torch.Tensor], path: Path, learned: bool) -> dict[str, LearnedClass]:
    sides: dict[str, dict[str, torch.Tensor]] = {}
    if not learned and "text_features" in tensors and "normal" not in tensors:  # PromptAD checkpoint
        tf = tensors["text_features"]
        if tf.dim() != 2 or tf.shape[0] != 2:
            raise LearnedPromptsError(f"{path}: 'text_features' must be (2, D) (normal, abnormal), "
                                      f"got {tuple(tf.shape)}")
        sides[ALL] = {"normal": tf[:1], "abnormal": tf[1:]}
    for key, t in tensors.items():
        cls, _, part = key.rpartition("/")
        if part in ("normal", "abnormal", "context_normal", "context_abnormal"):
            sides.setdefault(cls or ALL, {})[part] = t
    out: dict[str, LearnedClass] = {}
    for cls, parts in sides.items():
        missing = [p for p in ("normal", "abnormal") if p not in parts]
        label = "every class" if cls == ALL else f"class {cls!r}"
        if missing:
            raise LearnedPromptsError(f"{path}: {label} has no {' and no '.join(missing)} embeddings")
        n = _matrix(parts["normal"], f"{'' if cls == ALL else cls + '/'}normal", path)
        a = _matrix(parts["abnormal"], f"{'' if cls == ALL else cls + '/'}abnormal", path)
        out[cls] = LearnedClass(n, a, parts.get("context_normal"), parts.get("context_abnormal"))
    if not out:
        raise LearnedPromptsError(f"{path}: no prompt embeddings found (keys: {', '.join(sorted(tensors)[:8]) or 'none'}); "
                                  "expected 'normal' (N, D) and 'abnormal' (M, D) tensors")
    dims = {e.normal.shape[1] for e in out.values()} | {e.abnormal.shape[1] for e in out.values()}
    if len(dims) > 1:
        raise LearnedPromptsError(f"{path}: embeddings of different dimensions {sorted(dims)} in one file")
    return out


class LearnedPromptSource:
    """A prompt source whose entries are precomputed embeddings (``learned:normal:<i>`` ...).

    ``backbone`` (optional): checked against the file at once (:meth:`LearnedPrompts.check`).
    """

    name = SOURCE_NAME

    def __init__(self, learned: LearnedPrompts, backbone=None) -> None:
        self.learned = learned
        self.checked = backbone is not None
        self.warnings = learned.check(backbone) if backbone is not None else []

    @classmethod
    def load(cls, path: str | Path, backbone=None) -> "LearnedPromptSource":
        return cls(LearnedPrompts.load(path), backbone)

    def prompts(self, class_name: str) -> PromptSet:
        entry = self.learned.for_class(class_name)
        if entry is None:
            return PromptSet((), ())
        normal = tuple(f"{self.name}:normal:{i}" for i in range(entry.normal.shape[0]))
        abnormal = tuple(f"{self.name}:abnormal:{j}" for j in range(entry.abnormal.shape[0]))
        emb = dict(zip(normal, entry.normal)) | dict(zip(abnormal, entry.abnormal))
        return PromptSet(normal, abnormal, (self.name,) * len(normal), (self.name,) * len(abnormal), emb)

    def describe(self) -> dict[str, Any]:
        """What the run record says about the file."""
        lp = self.learned
        out: dict[str, Any] = {"file": lp.path, "sha256": lp.sha256,
                               "kind": "plain embeddings" if lp.plain else "learned (alfa-ad learn-prompts)",
                               "classes": sorted(lp.classes), "dimension": lp.dim}
        if lp.plain:
            out["check"] = "not checked: plain embedding file without a model fingerprint"
        else:
            m = lp.meta or {}
            out.update(check="model and weights fingerprint match this run" if self.checked else "not checked",
                       model=m.get("model"), weights=m.get("weights"), shots=m.get("shots"), seed=m.get("seed"))
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def learned_sources(config: Any, backbone: Any = None) -> list[LearnedPromptSource]:
    """The ``learned`` entry of :data:`alfa_ad.registry.PROMPT_SOURCES`: the config's
    ``learned`` file, checked against ``backbone``."""
    return [LearnedPromptSource.load(config.learned, backbone)]
