"""The prompt-learning loop: per class, context vectors learned on the frozen CLIP from
normal shots (and synthetic defects made on them), never from test images.

:func:`learn_prompts` receives the normal images to learn from and nothing else; the
CLI (``alfa-ad learn-prompts``) draws them exactly as ``alfa-ad run --shots k --seed s``
draws its references.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .._version import __version__
from ..io.images import load_image
from ..model.backbone import ClipBackbone
from ..prompting.learned import FORMAT, LearnedClass, LearnedPrompts
from ..prompting.templates import ALFA_ABNORMAL_STATES, readable_class_name
from .context import PromptContext
from .features import Features, extract_features
from .losses import LossWeights, adapted, clip_ada_loss, prompt_loss
from .synthetic import synthetic_defects

OBJECTIVES = ("promptad", "clip-ada")
OnEpoch = Callable[[str, int, int, float], None]  # (class, epoch done, epochs, loss)


@dataclass
class LearnConfig:
    """Everything that changes what is learned (recorded in the file).  Defaults follow
    PromptAD's public code (4 normal context vectors, 3 normal prompts, 1 abnormal
    context vector, 4 abnormal prompts, 100 epochs of SGD lr 0.002 with cosine decay)."""

    epochs: int = 100
    optimizer: str = "sgd"  # "sgd" (PromptAD) or "adam"
    lr: float = 0.002
    clip_grad: float = 1.0  # gradient-norm clipping (0: none)
    momentum: float = 0.9
    weight_decay: float = 0.0005
    min_lr: float = 1e-5
    n_ctx: int = 4
    n_prompts: int = 3
    n_ctx_abnormal: int = 1
    n_prompts_abnormal: int = 4
    init_std: float = 0.02
    init: str = "words"  # "words" (CoOp: "a photo of a") or "random" (PromptAD)
    init_noise: float = 0.002  # noise on the "words" initialisation (breaks the prompts' symmetry)
    temperature: float = 0.07
    margin: float = 0.0
    abnormal_weight: float = 1.0
    align_weight: float = 0.001  # PromptAD's lambda
    per_prompt: bool = True
    synthetic: int = 16  # synthetic defects per class, made round-robin on the shots (0: none)
    patience: int = 0  # 0: fixed schedule; N: early stopping on the validation split
    scales: tuple[int, ...] = (2, 3)
    # "promptad" (contrastive + margin losses) or "clip-ada" (focal + dice on the synthetic
    # defects' windows, and a linear visual adapter folded into the prompts; losses.py)
    objective: str = "promptad"
    adapter_weight: float = 1.0  # clip-ada: weight of |W - I|^2

    def __post_init__(self) -> None:
        self.scales = tuple(int(s) for s in self.scales)
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.synthetic < 0 or self.patience < 0:
            raise ValueError("synthetic and patience must be 0 or more")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {self.optimizer!r}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scales"] = list(self.scales)
        return out

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.temperature, self.margin, self.abnormal_weight, self.align_weight, self.per_prompt)


def default_handwritten(class_text: str) -> list[str]:
    """ALFA's six abnormal state phrases for the class, as sentences (``damaged hazelnut.``)."""
    return [s.format(class_text) + "." for s in ALFA_ABNORMAL_STATES]


@contextlib.contextmanager
def _frozen(module: torch.nn.Module, deterministic: bool = True):
    """CLIP weights without gradients, deterministic kernels; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    was_det = torch.are_deterministic_algorithms_enabled()
    for p, _ in flags:
        p.requires_grad_(False)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        torch.use_deterministic_algorithms(was_det)


def _class_seed(seed: int, class_name: str) -> list[int]:
    return [int(seed), zlib.crc32(class_name.encode())]


def _training_sets(backbone: ClipBackbone, images: list[Image.Image], config: LearnConfig,
                   rng: np.random.Generator) -> tuple[Features, Features | None]:
    bad, masks, sources = synthetic_defects(images, config.synthetic, rng)
    train = extract_features(backbone, images, bad, masks, sources, config.scales)
    if not config.patience:
        return train, None
    # validation: mirrored shots (normal) and fresh defects on them; no test image
    flipped = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
    vbad, vmasks, vsources = synthetic_defects(flipped, max(1, config.synthetic // 2), rng)
    return train, extract_features(backbone, flipped, vbad, vmasks, vsources, config.scales)


def _optimiser(ctx: torch.nn.Module, config: LearnConfig, dim: int, device):
    """``(adapter or None, parameter groups, optimiser)``: the context vectors, and under the
    clip-ada objective the linear visual adapter, started at the identity and not decayed."""
    adapter = torch.nn.Parameter(torch.eye(dim, device=device)) if config.objective == "clip-ada" else None
    groups = [{"params": list(ctx.parameters())}]
    if adapter is not None:
        groups.append({"params": [adapter], "weight_decay": 0.0})
    if config.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return adapter, groups, opt


def learn_class(backbone: ClipBackbone, images: Sequence[Any], class_name: str, config: LearnConfig, seed: int = 0,
                class_text: str | None = None, handwritten: Sequence[str] | None = None,
                on_epoch: OnEpoch | None = None) -> tuple[LearnedClass, dict[str, Any]]:
    """Learn the prompts of one class from its normal ``images`` (paths, PIL or arrays).

    Returns the learned embeddings and facts for the file (epochs run, losses, feature
    counts).  ``class_text`` is the object name in the prompts (default: readable
    ``class_name``); ``handwritten`` the abnormal descriptions of the semantic
    concatenation and the alignment term (default: ALFA's abnormal states).
    """
    if not images:
        raise ValueError(f"class {class_name!r}: no normal image to learn prompts from")
    text = class_text or readable_class_name(class_name)
    hand = list(handwritten) if handwritten is not None else default_handwritten(text)
    pil = [load_image(im) for im in images]
    rng = np.random.default_rng(_class_seed(seed, class_name))
    gen = torch.Generator().manual_seed(int(np.random.default_rng(_class_seed(seed, class_name)).integers(2**62)))
    device = backbone.device
    weights = config.weights
    with _frozen(backbone.clip):
        train, val = _training_sets(backbone, pil, config, rng)
        train = train.to(device)
        val = val.to(device) if val is not None else None
        ctx = PromptContext(backbone.clip, backbone.tokenizer, text, hand, n_ctx=config.n_ctx,
                            n_prompts=config.n_prompts, n_ctx_abnormal=config.n_ctx_abnormal,
                            n_prompts_abnormal=config.n_prompts_abnormal, init_std=config.init_std,
                            init=config.init, init_noise=config.init_noise, generator=gen).to(device)
        adapter, groups, opt = _optimiser(ctx, config, backbone.embed_dim, device)

        def loss_of(out, feats, align=True):
            if adapter is None:
                return prompt_loss(*out, feats, weights, align=align)
            return clip_ada_loss(*out, feats, weights, adapter, config.adapter_weight, align=align)

        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs, eta_min=config.min_lr)
        best = (float("inf"), 0, None)
        history: list[float] = []
        for epoch in range(config.epochs):
            opt.zero_grad(set_to_none=True)
            loss, parts = loss_of(ctx(), train)
            loss.backward()
            if config.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.clip_grad)
            opt.step()
            sched.step()
            history.append(parts["total"])
            if val is not None:
                with torch.no_grad():
                    v = float(loss_of(ctx(), val, align=False)[0])
                if v < best[0] - 1e-6:
                    state = {k: t.detach().clone() for k, t in ctx.state_dict().items()}
                    best = (v, epoch + 1, (state, None if adapter is None else adapter.detach().clone()))
            if on_epoch:
                on_epoch(class_name, epoch + 1, config.epochs, parts["total"])
            if val is not None and epoch + 1 - best[1] >= config.patience:
                break
        if best[2] is not None:
            ctx.load_state_dict(best[2][0])
            if adapter is not None:
                adapter.data.copy_(best[2][1])
        with torch.no_grad():
            normal, hand_emb, learned = ctx()
            if adapter is not None:  # the adapter folded into the embeddings the file holds
                normal, hand_emb, learned = (adapted(t, adapter) for t in (normal, hand_emb, learned))
    abnormal = torch.cat([hand_emb, learned])
    facts: dict[str, Any] = {
        "prompt_text": text, "handwritten": hand, "normal": int(normal.shape[0]), "abnormal": int(abnormal.shape[0]),
        "epochs_run": len(history), "first_loss": round(history[0], 6), "final_loss": round(history[-1], 6),
        "features": train.counts, "objective": config.objective,
    }
    if adapter is not None:
        eye = torch.eye(adapter.shape[0], device=adapter.device)
        facts["adapter_change"] = round(float((adapter.detach() - eye).norm()), 6)  # |W - I|_F
    if val is not None:
        facts.update(best_epoch=best[1], best_validation_loss=round(best[0], 6), validation=val.counts)
    ctx_n, ctx_a = (c.detach().float().cpu() for c in ctx.context())
    entry = LearnedClass(normal.float().cpu(), abnormal.float().cpu(), ctx_n, ctx_a)
    return entry, facts


def learn_prompts(backbone: ClipBackbone, shots: Mapping[str, Sequence[Any]], config: LearnConfig | None = None, *,
                  seed: int = 0, k: str | int | None = None, image_names: Mapping[str, Sequence[str]] | None = None,
                  class_texts: Mapping[str, str] | None = None,
                  handwritten: Mapping[str, Sequence[str]] | None = None,
                  on_epoch: OnEpoch | None = None) -> LearnedPrompts:
    """Learn prompts for every class of ``shots`` (class -> its normal images only).

    ``k``: what ``--shots`` was (recorded); ``image_names``: how to name the images in
    the file (default: file names of paths, ``image <i>`` otherwise).
    """
    config = config or LearnConfig()
    classes: dict[str, LearnedClass] = {}
    info: dict[str, Any] = {}
    for cls, images in shots.items():
        entry, facts = learn_class(backbone, images, cls, config, seed, (class_texts or {}).get(cls),
                                   (handwritten or {}).get(cls), on_epoch)
        names = list((image_names or {}).get(cls) or [_name(im, i) for i, im in enumerate(images)])
        classes[cls] = entry
        info[cls] = {"images": names, **facts}
    weights = backbone.weights
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "alfa_ad": __version__,
        "model": weights.model_name, "weights": weights.label, "weights_source": weights.source,
        "weights_detail": weights.detail, "weights_sha256": weights.sha256,
        "weights_file": os.path.basename(weights.file) if weights.file else None,
        "text_fingerprint": backbone.fingerprint, "embed_dim": backbone.embed_dim,
        "shots": str(k if k is not None else max((len(v) for v in shots.values()), default=0)),
        "seed": int(seed), "config": config.as_dict(), "classes": info,
    }
    return LearnedPrompts(classes, meta)


def _name(image: Any, i: int) -> str:
    return os.path.basename(str(image)) if isinstance(image, (str, os.PathLike)) else f"image {i}"


__all__ = ["LearnConfig", "learn_class", "learn_prompts", "default_handwritten"]
