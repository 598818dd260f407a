"""Judging LLM sentences as CLIP prompts, with a recorded decision for every sentence.

:class:`PromptFilter` takes the sentences of one class and one side (normal or
abnormal) in the order they arrived and decides, for each:

1. **dropped** -- not a description (preamble, question, heading), an instruction
   ("Look for ..."), shorter than ``min_words``, an echo of the example we wrote
   into the query, the other side ("abnormal" wording on the normal side and the
   reverse), or it does not name the class and cannot safely be rewritten;
2. **rewritten** -- a fragment that describes the object without naming it is
   turned into ``"A photo of a/an {class} ..."`` when that is safe: it begins
   with *with/without/showing/having/featuring/that/which/whose* ("with a bent
   edge" -> "A photo of a metal nut with a bent edge") or with the pronoun *It*
   ("It has a crack" -> "A photo of a bottle that has a crack"), or with "The
   object/item/product/part" (replaced by "The {class}");
3. **duplicate** -- the same text up to case, punctuation and articles, or nearly
   the same words (Jaccard overlap of word sets >= ``jaccard``), or, when an
   embedding function is given, a text-embedding cosine >= ``cosine`` with a kept
   prompt;
4. **kept** (possibly cut to CLIP's 77-token context, noted as ``truncated``).

Every decision is a dict ``{"text", "decision", "reason"?, "prompt"?}`` so the
library shows why each sentence is or is not a prompt.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

from .classes import article, names_class, query_name
from .parse import fit_clip, is_preamble

__all__ = ["PromptFilter", "near_key", "Embed"]

Embed = Callable[[Sequence[str]], Any]   # texts -> (n, d) array-like of embeddings

_INSTRUCTION = re.compile(
    r"^(?:look|check|inspect|examine|compare|use|identify|ensure|verify|observe|pay attention|analy[sz]e|"
    r"consider|make sure|determine|search|note|notice|find|see if|try|zoom|measure|assess|evaluate|"
    r"you can|you should|you may|if you|to identify|to detect|to determine)\b", re.IGNORECASE)
_RELATIVE = re.compile(r"^(with|without|showing|having|featuring|that|which|whose)\b\s*(.*)$", re.IGNORECASE)
_PRONOUN = re.compile(r"^(it'?s|it|its)\s+(.+)$", re.IGNORECASE)
_GENERIC = re.compile(r"^the (object|item|product|part)\b", re.IGNORECASE)
_ABNORMAL_WORDS = re.compile(
    r"\b(abnormal|anomal\w*|defect\w*|damage[ds]?|broken|faulty|flaw(ed|s)?|crack(s|ed)?|scratch(es|ed)?|dent(s|ed)?|"
    r"stain(s|ed)?|chip(s|ped)?|torn|missing|contaminat\w*|deform\w*|bent|misaligned|discolou?r\w*)\b",
    re.IGNORECASE)
_NEGATION = re.compile(r"\b(no|not|without|free (of|from)|never|none|lack(s|ing)?|absence)\b|n't\b", re.IGNORECASE)
_NORMAL_START = re.compile(r"^(a|an|the)?\s*(normal|flawless|perfect|good|intact|pristine|defect-free)\b",
                           re.IGNORECASE)
_ARTICLES = {"a", "an", "the"}
_WORD = re.compile(r"[a-z0-9]+")


def near_key(text: str) -> str:
    """Lower case, punctuation and articles removed: equal keys are the same prompt."""
    return " ".join(w for w in _WORD.findall(text.lower()) if w not in _ARTICLES)


def _words(text: str) -> set[str]:
    return set(near_key(text).split())


class PromptFilter:
    """Sentences of one class and side -> prompts, with a decision per sentence."""

    def __init__(self, class_name: str, side: str, *, aliases: Iterable[str] = (), examples: Iterable[str] = (),
                 min_words: int = 4, jaccard: float = 0.9, embed: Embed | None = None, cosine: float = 0.95,
                 limit: int | None = None) -> None:
        if side not in ("normal", "abnormal"):
            raise ValueError(f"side must be 'normal' or 'abnormal', got {side!r}")
        self.class_name, self.side = class_name, side
        self.aliases = list(aliases)
        self.name = query_name(class_name)
        self.examples = {near_key(e) for e in examples}
        self.min_words, self.jaccard = min_words, jaccard
        self.embed, self.cosine, self.limit = embed, cosine, limit
        self.kept: list[str] = []
        self._keys: set[str] = set()
        self._word_sets: list[set[str]] = []

    def _rewrite(self, text: str) -> tuple[str | None, str]:
        """A form of ``text`` that names the class, and the rule used (None if unsafe)."""
        photo = f"A photo of {article(self.name)} {self.name}"
        m = _RELATIVE.match(text)
        if m and m.group(2):
            return f"{photo} {m.group(1).lower()} {m.group(2)}", "fragment completed"
        m = _PRONOUN.match(text)
        if m:
            head, rest = m.group(1).lower(), m.group(2)
            if head == "its":
                return f"{photo} whose {rest}", "pronoun replaced"
            if head in ("it's", "its"):
                return f"{photo} that is {rest}", "pronoun replaced"
            return f"{photo} that {rest}", "pronoun replaced"
        if _GENERIC.match(text):
            return _GENERIC.sub(f"The {self.name}", text, count=1), "generic noun replaced"
        return None, ""

    def _other_side(self, text: str) -> bool:
        if self.side == "normal":
            return _ABNORMAL_WORDS.search(text) is not None and _NEGATION.search(text) is None
        return _NORMAL_START.match(text) is not None and _ABNORMAL_WORDS.search(text) is None

    def judge(self, text: str) -> dict[str, Any]:
        """Decide about one sentence; a kept or rewritten prompt is appended to :attr:`kept`."""
        text = " ".join(str(text).split())
        rec: dict[str, Any] = {"text": text}

        def drop(reason: str) -> dict[str, Any]:
            rec.update(decision="dropped", reason=reason)
            return rec

        if is_preamble(text):
            return drop("not a description (preamble, question or heading)")
        if _INSTRUCTION.match(text):
            return drop("an instruction, not a description")
        if len(text.split()) < self.min_words:
            return drop(f"fewer than {self.min_words} words")
        if near_key(text) in self.examples:
            return drop("echo of the example given in the query")
        prompt, decision = text, "kept"
        if not names_class(text, self.class_name, self.aliases):
            prompt, rule = self._rewrite(text)
            if prompt is None:
                return drop("does not name the class and cannot be safely rewritten")
            decision, rec["reason"] = "rewritten", rule
        if self._other_side(prompt):
            return drop(f"describes the other side ({'a defect' if self.side == 'normal' else 'a normal object'})")
        fitted = fit_clip(prompt)
        if fitted != prompt:
            rec["truncated"] = True
            prompt = fitted
        if len(prompt.split()) < self.min_words or not names_class(prompt, self.class_name, self.aliases):
            return drop("too short once cut to CLIP's context")
        dup = self._duplicate_of(prompt)
        if dup is not None:
            rec.update(decision="duplicate", reason=dup, prompt=prompt)
            return rec
        if self.limit is not None and len(self.kept) >= self.limit:
            return drop(f"over the limit of {self.limit} prompts per side")
        rec.update(decision=decision, prompt=prompt)
        self.kept.append(prompt)
        self._keys.add(near_key(prompt))
        self._word_sets.append(_words(prompt))
        return rec

    def _duplicate_of(self, prompt: str) -> str | None:
        key = near_key(prompt)
        if key in self._keys:
            return "same text as a kept prompt"
        words = _words(prompt)
        for i, other in enumerate(self._word_sets):
            union = len(words | other)
            if union and len(words & other) / union >= self.jaccard:
                return f"near-duplicate (word overlap {len(words & other) / union:.2f}) of: {self.kept[i]}"
        return None

    def judge_all(self, texts: Iterable[str]) -> list[dict[str, Any]]:
        return [self.judge(t) for t in texts]

    def dedupe_by_embedding(self, decisions: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Second pass: drop kept prompts whose embedding cosine with an earlier kept one is >= ``cosine``.

        Updates the matching records in ``decisions`` (decision -> "duplicate") and returns
        records for the prompts removed.  Does nothing without an embedding function.
        """
        if self.embed is None or len(self.kept) < 2:
            return []
        import numpy as np

        emb = np.asarray(self.embed(self.kept), dtype=np.float64)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        keep: list[int] = []
        removed: dict[str, str] = {}
        for i in range(len(self.kept)):
            sims = emb[keep] @ emb[i] if keep else np.zeros(0)
            j = int(np.argmax(sims)) if sims.size else -1
            if sims.size and sims[j] >= self.cosine:
                removed[self.kept[i]] = f"near-duplicate (embedding cosine {sims[j]:.3f}) of: {self.kept[keep[j]]}"
            else:
                keep.append(i)
        out = []
        for rec in decisions or []:
            if rec.get("decision") in ("kept", "rewritten") and rec.get("prompt") in removed:
                rec["decision"], rec["reason"] = "duplicate", removed[rec["prompt"]]
                out.append(rec)
        self.kept = [self.kept[i] for i in keep]
        return out
