"""Learnable prompt context vectors (CoOp) through the frozen open_clip text tower.

A prompt is a token sequence ``[SOT] v_1 .. v_n <words> . [EOT]`` in which the word
embeddings of ``v_1 .. v_n`` are replaced by learnable vectors of the token-embedding
width.  The sequence then takes the text tower's ordinary path: positional
embedding, transformer (causal mask), ``ln_final``, the feature at the EOT token,
``text_projection``.  PromptAD's three prompt families (docs/method.md, "Learned
prompts"):

* normal ``i``:              ``[SOT] N_i <class> . [EOT]``
* hand-written abnormal ``i,s``: ``[SOT] N_i <abnormal description s> [EOT]``   (semantic concatenation)
* learned abnormal ``i,j``:  ``[SOT] N_i A_j <class> . [EOT]``                 (semantic concatenation)

with ``N_i`` (``n_ctx`` vectors) and ``A_j`` (``n_ctx_abnormal`` vectors) learnable.
Only these vectors receive gradients; every CLIP weight stays frozen.

**Initialisation** (``init="words"``, the default): the normal context starts at the
word embeddings of "a photo of a" (CoOp's initialisation), each abnormal context
vector at the mean word embedding of the vocabulary (a word with no particular
meaning), both plus ``N(0, (s * 0.002)^2)`` noise so that the prompts differ;
``init="random"`` is PromptAD's ``N(0, (s * 0.02)^2)`` alone.

**Scale.**  The vectors are ``s * theta`` with ``theta`` the parameters and
``s = std(word-embedding entries) / 0.02``: in units of the model's own word embeddings,
so PromptAD's initialisation (``N(0, 0.02^2)``) and learning rate mean the same for
a model whose word embeddings are not CLIP-sized (``s`` is about 1 for CLIP).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class TextTower:
    """The parts of open_clip's own text encoder, run from token embeddings."""

    def __init__(self, clip: nn.Module) -> None:
        tower = clip.text if hasattr(getattr(clip, "text", None), "token_embedding") else clip
        missing = [n for n in ("token_embedding", "positional_embedding", "transformer", "ln_final")
                   if not hasattr(tower, n)]
        if missing or getattr(tower, "cls_emb", None) is not None:
            raise ValueError(f"prompt learning needs open_clip's own text transformer; "
                             f"{type(clip).__name__}'s text tower is {type(tower).__name__}")
        self.clip = clip
        self.tower = tower
        self.pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos"):
            raise ValueError(f"prompt learning supports argmax/eos text pooling, not {self.pool_type!r}")
        self.eos_id = getattr(clip, "text_eos_id", None) or getattr(tower, "eos_id", None)
        self.width = tower.token_embedding.weight.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the token whose feature is the text embedding (EOT), per row."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        return (ids == self.eos_id).int().argmax(dim=-1)

    @torch.no_grad()
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings of ``ids`` ``(B, L)``: ``(B, L, W)`` float32."""
        return self.tower.token_embedding(ids.to(self.device)).float()

    def _causal(self, mask: torch.Tensor | None, length: int) -> bool:
        if mask is None or mask.dim() != 2:
            return False
        m = mask[:length, :length].float()
        upper = torch.triu(torch.ones_like(m, dtype=torch.bool), 1)
        return bool(torch.isinf(m[upper]).all() and (m[~upper] == 0).all())

    def encode(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``(B, D)`` (float32, or float64 for a float64 tower) from token embeddings ``x`` ``(B, L, W)``.

        ``ids`` are the token ids the sequence was built from (for the EOT position).
        With a causal mask, tokens after the last EOT cannot change any EOT feature,
        so the sequence is cut there (about 6x less work than 77 tokens; exact).
        """
        t = self.tower
        mask = getattr(t, "attn_mask", None)
        pos = self.pooled_positions(ids)
        length = x.shape[1]
        if self._causal(mask, length):
            length = int(pos.max()) + 1
        cast = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") else self.dtype
        h = x[:, :length].to(self.device, cast) + t.positional_embedding[:length].to(cast)
        h = t.transformer(h, attn_mask=None if mask is None else mask[:length, :length])
        h = t.ln_final(h)
        h = h[torch.arange(h.shape[0], device=h.device), pos.to(h.device)]
        proj = getattr(t, "text_projection", None)
        if proj is not None:
            h = proj(h) if isinstance(proj, nn.Linear) else h @ proj
        return h if h.dtype == torch.float64 else h.float()  # float64 kept (gradient checks)


INITS = ("words", "random")
INIT_WORDS = ("a", "photo", "of", "a")
REFERENCE_STD = 0.02  # CLIP's word-embedding initialisation, PromptAD's context initialisation


@torch.no_grad()
def clip_std(text: TextTower) -> float:
    """Standard deviation of the model's word-embedding entries."""
    return float(text.tower.token_embedding.weight.float().std())


def _placeholder_ids(tokenizer, texts: Sequence[str], slots: int, placeholder: int) -> torch.Tensor:
    """Tokenize ``texts`` (each starting with ``slots`` placeholder words) and check that the
    placeholders sit right after the start token (positions ``1 .. slots``)."""
    ids = tokenizer(list(texts))
    if not (ids[:, 1 : 1 + slots] == placeholder).all():
        raise ValueError("prompt learning needs a tokenizer with a start token and one token per placeholder word")
    return ids


class PromptContext(nn.Module):
    """Learnable normal / abnormal context vectors for one class and the three prompt families.

    ``forward()`` returns raw text embeddings ``(normal (P, D), handwritten (P*S, D),
    learned (P*Q, D))`` with ``P = n_prompts``, ``S = len(handwritten)``,
    ``Q = n_prompts_abnormal``; row order is prompt-major (``i * S + s``, ``i * Q + j``).
    """

    def __init__(self, clip: nn.Module, tokenizer, class_text: str, handwritten: Sequence[str], *,
                 n_ctx: int = 4, n_prompts: int = 3, n_ctx_abnormal: int = 1, n_prompts_abnormal: int = 4,
                 init_std: float = 0.02, init: str = "words", init_noise: float = 0.002,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if min(n_ctx, n_prompts, n_ctx_abnormal, n_prompts_abnormal) < 1:
            raise ValueError("context sizes and prompt counts must be at least 1")
        self.text = TextTower(clip)
        self.n_ctx, self.n_ctx_abnormal = n_ctx, n_ctx_abnormal
        self.n_prompts, self.n_prompts_abnormal = n_prompts, n_prompts_abnormal
        self.handwritten = tuple(handwritten)
        w = self.text.width
        self.scale = float(clip_std(self.text)) / REFERENCE_STD
        if init not in INITS:
            raise ValueError(f"context initialisation must be one of {', '.join(INITS)}, got {init!r}")
        std = init_noise if init == "words" else init_std
        noise_n = torch.randn(n_prompts, n_ctx, w, generator=generator) * std
        noise_a = torch.randn(n_prompts_abnormal, n_ctx_abnormal, w, generator=generator) * std
        if init == "words":  # CoOp: the words "a photo of a"; abnormal: the mean word; plus the noise
            words = tokenizer([" ".join(INIT_WORDS[i % len(INIT_WORDS)] for i in range(n_ctx))])[0, 1 : 1 + n_ctx]
            start_n = self.text.token_embeddings(words[None]).cpu()[0] / self.scale
            start_a = self.text.tower.token_embedding.weight.float().mean(0).cpu() / self.scale
            noise_n, noise_a = noise_n + start_n, noise_a + start_a
        self.ctx_normal = nn.Parameter(noise_n)
        self.ctx_abnormal = nn.Parameter(noise_a)
        x_id = int(tokenizer(["X"])[0][1])
        lead = " ".join(["X"] * n_ctx)
        lead_ab = " ".join(["X"] * (n_ctx + n_ctx_abnormal))
        body = f"{class_text}."
        ids_n = _placeholder_ids(tokenizer, [f"{lead} {body}"], n_ctx, x_id)
        ids_l = _placeholder_ids(tokenizer, [f"{lead_ab} {body}"], n_ctx + n_ctx_abnormal, x_id)
        ids_h = (_placeholder_ids(tokenizer, [f"{lead} {h}" for h in self.handwritten], n_ctx, x_id)
                 if self.handwritten else ids_n[:0])
        for name, ids in (("ids_normal", ids_n), ("ids_hand", ids_h), ("ids_learned", ids_l)):
            self.register_buffer(name, ids, persistent=False)
            self.register_buffer(name.replace("ids", "emb"), self.text.token_embeddings(ids).cpu(), persistent=False)

    def _sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-embedding sequences of all prompts ``(n, L, W)`` and their ids ``(n, L)``."""
        n, na = self.n_ctx, self.n_ctx_abnormal
        p, q, s = self.n_prompts, self.n_prompts_abnormal, len(self.handwritten)
        ctx_n, ctx_a = self.context()
        e = self.emb_normal.expand(p, -1, -1)
        normal = torch.cat([e[:, :1], ctx_n, e[:, 1 + n :]], 1)
        parts, ids = [normal], [self.ids_normal.expand(p, -1)]
        if s:
            e = self.emb_hand.repeat(p, 1, 1)
            parts.append(torch.cat([e[:, :1], ctx_n.repeat_interleave(s, 0), e[:, 1 + n :]], 1))
            ids.append(self.ids_hand.repeat(p, 1))
        e = self.emb_learned.expand(p * q, -1, -1)
        learned = torch.cat([e[:, :1], ctx_n.repeat_interleave(q, 0), ctx_a.repeat(p, 1, 1), e[:, 1 + n + na :]], 1)
        parts.append(learned)
        ids.append(self.ids_learned.expand(p * q, -1))
        return torch.cat(parts), torch.cat(ids)

    def context(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The context vectors in token-embedding units: ``(P, n_ctx, W)``, ``(Q, n_ctx_abnormal, W)``."""
        return self.scale * self.ctx_normal, self.scale * self.ctx_abnormal

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, ids = self._sequences()
        emb = self.text.encode(x, ids)
        p, s = self.n_prompts, len(self.handwritten)
        return emb[:p], emb[p : p + p * s], emb[p + p * s :]
