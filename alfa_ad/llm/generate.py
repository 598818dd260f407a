"""LLM-generated prompts (ALFA section 4.2) and descriptors (section 5.4), at the paper's scale.

Any OpenAI-protocol server works (OpenAI, vLLM, llama.cpp, Ollama, ...).  Per class:

* the paper's descriptor query, once ("What are useful descriptions for
  distinguishing an anomaly {class} in a photo?"), kept apart as descriptors;
* for each normality rule (``--rules``), one request for objects that follow it
  (normal) and one for objects that break it (abnormal);
* rounds of side requests (:func:`.queries.side_ask`): the paper's question or a
  paraphrase, the class context and rules, and a started numbered list; each
  round uses the next paraphrase, starter, temperature and seed, until the side
  has ``target`` prompts or ``max_rounds`` rounds were asked.

Every sentence of every reply goes through :class:`.filters.PromptFilter`
(names the class or is safely rewritten, not a duplicate, within CLIP's 77
tokens) and its decision is stored in the library next to the raw reply.

Replies are cached on disk (``<cache_dir>/llm-replies``, keyed by a hash of the
server URL, model, full messages or prompt and sampling parameters -- never the
API key); only replies with at least one sentence are stored.  The library file
is rewritten atomically after each class, so an interrupted run keeps what it
had, and a rerun asks only for what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from ..io.paths import default_cache_dir
from .classes import MVTEC_CLASSES, VISA_CLASSES, class_aliases, class_context, query_name, resolve_classes
from .client import LLMClient, LLMConfig, LLMError, open_reply_cache
from .filters import Embed, PromptFilter
from .._version import __version__
from ..prompting.library import TOOL, find_class, load_library, new_library, save_library
from .parse import is_preamble, parse_reply, split_reply
from .queries import QUERIES, STYLES, SYSTEM_PROMPT, Ask, Query, build_messages, descriptor_ask, render_chatml, \
    rule_ask, side_ask
from .rules import Rules

__all__ = [
    "MVTEC_CLASSES", "VISA_CLASSES", "resolve_classes",
    "Query", "QUERIES", "SYSTEM_PROMPT", "build_messages",
    "LLMConfig", "LLMClient", "LLMError", "GenerationSettings",
    "parse_reply", "generate_class_prompts", "generate_library", "ProgressEvent",
    "default_cache_dir", "open_reply_cache",
]

RECIPE = 3   # bump when the queries or the filter change what a class entry holds


@dataclass(frozen=True)
class GenerationSettings:
    """How many requests and which sampling; recorded in the library (``settings``)."""

    target: int = 80                          # stop a side once it has this many prompts
    max_rounds: int = 8                       # side requests per side at most
    temperatures: tuple[float, ...] = (0.7, 0.9, 1.0)
    top_p: float = 0.95
    n_items: int = 20                         # list length asked for per request
    max_per_side: int = 120                   # prompts kept per side at most
    style: str = "chat"                       # "chat" | "chatml" (see queries.py)
    jaccard: float = 0.9
    cosine: float = 0.95                      # used only with an embedding function
    embedding: str | None = None              # name of that embedding model (recorded)
    descriptor_max_tokens: int = 256          # the descriptor reply is a short list

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.target < 1 or self.max_rounds < 1 or self.n_items < 1 or self.max_per_side < 1:
            raise ValueError("target, max_rounds, n_items and max_per_side must be >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures must be a non-empty list of values >= 0")

    def sampling(self, round_: int) -> dict[str, Any]:
        """Temperature and seed of the ``round_``-th request of a side (seed = round)."""
        return {"temperature": self.temperatures[round_ % len(self.temperatures)], "top_p": self.top_p,
                "seed": round_}

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": RECIPE, "target": self.target, "max_rounds": self.max_rounds,
                "temperatures": list(self.temperatures), "top_p": self.top_p, "seeds": "round number (0, 1, ...)",
                "n_items": self.n_items, "max_per_side": self.max_per_side, "style": self.style,
                "descriptor_max_tokens": self.descriptor_max_tokens,
                "jaccard": self.jaccard, "embedding_dedupe": (
                    {"model": self.embedding, "cosine": self.cosine} if self.embedding else None)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fingerprint(settings: GenerationSettings, rules: Sequence[str], aliases: Sequence[str]) -> str:
    blob = json.dumps({"s": settings.as_dict(), "r": list(rules), "a": list(aliases)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Asker:
    """Sends one :class:`Ask` (from the cache when possible) and returns its audit record."""

    def __init__(self, client: LLMClient, cache: Any, refresh: bool, style: str, label: str) -> None:
        self.client, self.cache, self.refresh, self.style, self.label = client, cache, refresh, style, label
        self.dates: list[str] = []

    def text_of(self, ask: Ask, reply: str) -> str:
        """The text to split: our started list + the continuation (chatml), else the reply."""
        if ask.head and self.style == "chatml":
            return ask.started + reply
        if ask.head and reply.lstrip()[:1].islower():      # chat reply that continues item 2 mid-sentence
            return f"{ask.head} {reply.lstrip()}"
        return reply

    def __call__(self, ask: Ask, sampling: dict[str, Any], what: str) -> tuple[dict[str, Any], list[str]]:
        messages = ask.messages(self.style)
        chatml = self.style == "chatml" and bool(ask.head)
        prompt = render_chatml(messages) if chatml else None
        key = (self.client.cache_key(prompt, sampling, kind="completion") if chatml
               else self.client.cache_key(messages, sampling))

        def usable(content: str) -> bool:
            return any(len(t.split()) >= (3 if ask.head else 1) and not is_preamble(t)
                       for t in split_reply(self.text_of(ask, content)))

        hit = None
        if self.cache is not None and not self.refresh:
            hit = self.cache.get(key)
            if not (isinstance(hit, dict) and isinstance(hit.get("content"), str) and usable(hit["content"])):
                hit = None
        if hit is None:
            label = f"{self.label} ({what})"
            if chatml:
                content, served = self.client.complete(prompt, label=label, validate=usable, sampling=sampling,
                                                       stop=["<|im_end|>", "<|endoftext|>"])
            else:
                content, served = self.client.chat(messages, label=label, validate=usable, sampling=sampling)
            hit = {"content": content, "served_model": served, "date": _now()}
            if self.cache is not None:
                self.cache.set(key, hit)
        self.dates.append(str(hit.get("date") or _now()))
        record = {**ask.as_record(), "messages": messages, "sampling": self.client.sampling(sampling),
                  "endpoint": "completions (ChatML prompt)" if chatml else "chat/completions",
                  "raw_reply": hit["content"], "served_model": hit.get("served_model"), "date": hit.get("date")}
        sentences = split_reply(self.text_of(ask, hit["content"]))
        record["cut_off"] = bool(ask.head) and bool(sentences) and _cut_off(hit["content"])
        return record, sentences


def generate_class_prompts(
    client: LLMClient,
    class_name: str,
    *,
    cache: Any = None,
    refresh: bool = False,
    settings: GenerationSettings | None = None,
    rules: Sequence[str] = (),
    aliases: Sequence[str] = (),
    embed: Embed | None = None,
    max_per_side: int | None = None,
) -> dict[str, Any]:
    """Ask about ``class_name`` (descriptors, rules, side rounds); return the library entry.

    ``cache``: a ``diskcache.Cache`` (or any mapping-like with get/set) or None.
    ``refresh``: ignore cached replies (fresh ones are still written).  Each reply
    is cached as soon as it arrives, so a class interrupted after some requests
    re-asks only the later ones.  ``embed``: texts -> embeddings, to drop prompts
    whose cosine with a kept one is >= ``settings.cosine``.
    """
    s = settings or GenerationSettings()
    if max_per_side is not None:
        s = GenerationSettings(**{**s.__dict__, "max_per_side": max_per_side})
    rules, aliases = list(rules), class_aliases(class_name, aliases)
    ask = _Asker(client, cache, refresh, s.style, f"class {class_name!r}")
    name = query_name(class_name)
    filters = {side: PromptFilter(class_name, side, aliases=aliases, jaccard=s.jaccard, embed=embed,
                                  cosine=s.cosine, limit=s.max_per_side) for side in ("normal", "abnormal")}
    requests: list[dict[str, Any]] = []

    # descriptors: the paper's query as written, at the first temperature
    rec, sentences = ask(descriptor_ask(class_name), {**s.sampling(0), "max_tokens": s.descriptor_max_tokens},
                         "descriptor query")
    descriptors = parse_reply("\n".join(sentences), min_words=1, max_items=s.max_per_side)
    rec["sentences"] = [{"text": t, "decision": "kept" if t in descriptors else "dropped"} for t in sentences]
    requests.append(rec)

    by_rule = _rule_rounds(ask, filters, class_name, rules, s, requests)
    _side_rounds(ask, filters, class_name, rules, s, requests)
    for side, f in filters.items():
        f.dedupe_by_embedding([d for r in requests if r["side"] == side for d in r.get("sentences", [])])
    if by_rule:
        for produced in by_rule:
            for side in ("normal", "abnormal"):
                produced[side] = [p for p in produced[side] if p in filters[side].kept]

    return {
        "class": class_name,
        "name": name,
        "aliases": aliases,
        "context": class_context(class_name),
        "normal": list(filters["normal"].kept),
        "abnormal": list(filters["abnormal"].kept),
        "descriptors": descriptors,
        "rules": by_rule,
        "queries": requests,
        "counts": _counts(requests),
        "model": client.model,
        "base_url": client.base_url,
        "settings": s.as_dict(),
        "fingerprint": _fingerprint(s, rules, aliases),
        "date": max(ask.dates) if ask.dates else _now(),
    }


def _rule_rounds(ask: "_Asker", filters: dict[str, PromptFilter], class_name: str, rules: Sequence[str],
                 s: GenerationSettings, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules: prompts that follow (normal) and break (abnormal) each rule."""
    by_rule: list[dict[str, Any]] = []
    for r_i, rule in enumerate(rules):
        produced: dict[str, Any] = {"rule": rule, "normal": [], "abnormal": []}
        for side in ("normal", "abnormal"):
            a = rule_ask(class_name, side, rule)
            f = filters[side]
            f.examples.add(_key(a.example))
            rec, sentences = ask(a, s.sampling(r_i), f"{side} rule query")
            rec["sentences"] = _judge(f, sentences, rec)
            produced[side] = [d["prompt"] for d in rec["sentences"] if d["decision"] in ("kept", "rewritten")]
            requests.append(rec)
        by_rule.append(produced)
    return by_rule


def _side_rounds(ask: "_Asker", filters: dict[str, PromptFilter], class_name: str, rules: Sequence[str],
                 s: GenerationSettings, requests: list[dict[str, Any]]) -> None:
    """Side rounds until each side has its target (or the rounds run out)."""
    for side in ("abnormal", "normal"):
        f = filters[side]
        for round_ in range(s.max_rounds):
            if len(f.kept) >= min(s.target, s.max_per_side):
                break
            a = side_ask(class_name, side, round_, rules, s.n_items)
            f.examples.add(_key(a.example))
            rec, sentences = ask(a, s.sampling(round_), f"{side} query, round {round_ + 1}")
            rec["sentences"] = _judge(f, sentences, rec)
            requests.append(rec)


def _cut_off(reply: str) -> bool:
    """Whether a list reply ends mid-sentence (the token limit cut its last item)."""
    tail = reply.rstrip()
    return bool(tail) and tail[-1] not in ".!?)\"'”"


def _judge(f: PromptFilter, sentences: list[str], rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The filter's decisions; the last sentence of a cut-off reply is dropped unjudged."""
    if rec.get("cut_off") and sentences:
        last = {"text": sentences[-1], "decision": "dropped", "reason": "cut off by the token limit"}
        return [*f.judge_all(sentences[:-1]), last]
    return f.judge_all(sentences)


def _key(text: str) -> str:
    from .filters import near_key

    return near_key(text)


def _counts(requests: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(requests)}
    for side in ("normal", "abnormal"):
        tally: dict[str, int] = {}
        for r in requests:
            if r["side"] == side:
                for d in r.get("sentences", []):
                    tally[d["decision"]] = tally.get(d["decision"], 0) + 1
        out[side] = tally
    return out


class ProgressEvent(NamedTuple):
    index: int          # 1-based position of the class in this run
    total: int
    class_name: str
    status: str         # "skipped" (already in the library) | "generating" | "done" | "failed"
    detail: str = ""    # the error line for "failed"


def _complete(entry: Any, model: str, settings: GenerationSettings, rules: Sequence[str],
              aliases: Sequence[str]) -> bool:
    """Whether ``entry`` already answers this request: same model, rules, aliases and
    settings, except that an entry made with a larger ``target`` also counts (it asked
    for at least as much; asking again for less would only drop prompts)."""
    if not (isinstance(entry, dict) and entry.get("model") == model
            and all(isinstance(entry.get(k), list) and entry.get(k) for k in ("normal", "abnormal", "descriptors"))):
        return False
    made = entry.get("settings", {}).get("target") if isinstance(entry.get("settings"), dict) else None
    if not isinstance(made, int) or isinstance(made, bool) or made < settings.target:
        return False
    return entry.get("fingerprint") == _fingerprint(replace(settings, target=made), rules, aliases)


def generate_library(
    classes: Iterable[str],
    config: LLMConfig,
    out_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    settings: GenerationSettings | None = None,
    rules: Rules | None = None,
    embed: Embed | None = None,
    client: LLMClient | None = None,
    max_per_side: int | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Generate (or complete) the library at ``out_path``; return ``(library, errors)``.

    A class already in the file from the same model, settings (or a larger ``target``),
    rules and aliases is skipped unless ``refresh``; an existing entry's ``aliases`` are reused.  The
    file is rewritten atomically after each generated class.  ``errors`` maps each
    failed class to a one-line message; the other classes still run.  An existing
    but invalid library file raises :class:`~alfa_ad.prompting.library.LibraryError`.
    """
    s = settings or GenerationSettings()
    if max_per_side is not None:
        s = GenerationSettings(**{**s.__dict__, "max_per_side": max_per_side})
    out = Path(out_path)
    library = load_library(out) if out.exists() else new_library()
    names = list(dict.fromkeys(classes))
    client = client or LLMClient(config)
    errors: dict[str, str] = {}

    def report(i: int, name: str, status: str, detail: str = "") -> None:
        if on_progress is not None:
            on_progress(ProgressEvent(i, len(names), name, status, detail))

    cache = open_reply_cache(cache_dir)
    try:
        for i, name in enumerate(names, 1):
            key = find_class(library, name) or name
            old = library["classes"].get(key)
            extra = [a for a in (old or {}).get("aliases", []) if isinstance(a, str)]
            class_rules = rules.for_class(name) if rules else []
            aliases = class_aliases(name, extra)
            if not refresh and _complete(old, config.model, s, class_rules, aliases):
                report(i, name, "skipped")
                continue
            report(i, name, "generating")
            try:
                entry = generate_class_prompts(client, name, cache=cache, refresh=refresh, settings=s,
                                               rules=class_rules, aliases=extra, embed=embed)
            except LLMError as e:
                errors[name] = str(e)
                report(i, name, "failed", str(e))
                continue
            library["classes"][key] = entry
            library["generator"] = {"tool": TOOL, "alfa_ad_version": __version__}
            if rules:
                library["rules_file"] = rules.source
            save_library(out, library)
            report(i, name, "done")
    finally:
        cache.close()
    return library, errors
