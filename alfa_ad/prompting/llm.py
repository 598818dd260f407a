"""LLM-generated prompts (ALFA section 4.2) and descriptors (section 5.4).

Any OpenAI-protocol chat-completions server works (OpenAI, vLLM, llama.cpp,
Ollama, ...).  For every class four queries are asked (:data:`QUERIES`):

* ``free``        -- the paper's "How to identify an abnormal {class} in an image?";
                     its lines count as abnormal descriptions;
* ``abnormal``    -- the syntactic-consistency variant: descriptions beginning with
                     "An abnormal image of {class}";
* ``normal``      -- likewise, "A normal image of {class}";
* ``descriptors`` -- section 5.4's "What are useful descriptions for distinguishing
                     an anomaly {class} in a photo?", kept apart as descriptors.

Replies are cached on disk (``<cache_dir>/llm-replies``, keyed by a hash of the
server URL, model, full messages and sampling parameters -- never the API key);
only replies that parse into at least one usable line are stored.  The library
file is rewritten atomically after each class, so an interrupted run keeps what
it had and a rerun asks only for the missing classes.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib.util
import json
import os
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from ..io.paths import default_cache_dir
from .library import TOOL, _version, find_class, load_library, new_library, save_library
from .templates import readable_class_name

__all__ = [
    "MVTEC_CLASSES", "VISA_CLASSES", "resolve_classes",
    "Query", "QUERIES", "SYSTEM_PROMPT", "build_messages",
    "LLMConfig", "LLMClient", "LLMError",
    "parse_reply", "generate_class_prompts", "generate_library", "ProgressEvent",
    "default_cache_dir", "open_reply_cache",
]

MVTEC_CLASSES: list[str] = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]
VISA_CLASSES: list[str] = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]
_CLASS_SETS = {"mvtec": MVTEC_CLASSES, "visa": VISA_CLASSES}


def resolve_classes(spec: str) -> list[str]:
    """``"mvtec"``, ``"visa"`` or a comma list (which may also name those sets) -> class names.

    Whitespace is stripped, duplicates dropped (first wins); an empty result is a ValueError.
    """
    out: list[str] = []
    for item in str(spec).split(","):
        item = " ".join(item.split())
        if not item:
            continue
        if any(unicodedata.category(ch).startswith("C") for ch in item):
            raise ValueError(f"class name {item!r} contains control characters")
        names = _CLASS_SETS.get(item.lower(), [item])
        for name in names:
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"no class names in {spec!r}: give 'mvtec', 'visa' or a comma-separated list")
    return out


# --------------------------------------------------------------------------- queries
SYSTEM_PROMPT = (
    "You describe the visual appearance of objects for an image-text model. "
    "Answer with short, concrete visual descriptions, one per line, "
    "with no introduction and no closing remarks."
)


@dataclass(frozen=True)
class Query:
    """One question asked per class.  ``side``: where its lines go."""

    kind: str          # "free" | "abnormal" | "normal" | "descriptors"
    side: str          # "abnormal" | "normal" | "descriptors"
    template: str      # formatted with cls=<readable class name>
    min_words: int = 3

    def text(self, class_name: str) -> str:
        return self.template.format(cls=readable_class_name(class_name))


# The paper's queries (section 4.2, 5.3 "syntactic consistency", 5.4 descriptors).
QUERIES: tuple[Query, ...] = (
    Query("free", "abnormal", "How to identify an abnormal {cls} in an image?"),
    Query(
        "abnormal", "abnormal",
        "How to identify an abnormal {cls} in an image? "
        "State each description beginning with: An abnormal image of {cls}. "
        "Write 10 different short descriptions, one per line.",
    ),
    Query(
        "normal", "normal",
        "How to identify a normal {cls} in an image? "
        "State each description beginning with: A normal image of {cls}. "
        "Write 10 different short descriptions, one per line.",
    ),
    Query(
        "descriptors", "descriptors",
        "Q: What are useful descriptions for distinguishing an anomaly {cls} in a photo?\n"
        "A: There are several key descriptions to tell there is an anomaly {cls} in a photo:\n-",
        min_words=1,
    ),
)


def build_messages(query: Query, class_name: str) -> list[dict[str, str]]:
    """The chat messages sent for ``query`` about ``class_name``."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": query.text(class_name)},
    ]


# --------------------------------------------------------------------------- parsing
MAX_WORDS = 60
MAX_CHARS = 300
CLIP_CONTEXT = 77

_HEADING = re.compile(r"^#{1,6}(\s|$)")
_PREFIX = re.compile(
    r"^(?:"
    r"[-\u2022\u2023\u25e6\u25aa\u25cf\u2013\u2014\u00b7>]+\s*"    # - • ‣ ◦ ▪ ● – — · >
    r"|[*+]\s+"                                                    # * item, + item
    r"|\(?\d{1,3}\s*[.):\]]\s*"                                    # 1.  1)  (1)  1:  1]
    r"|\(?[a-z][.)]\s+"                                            # a.  a)  (a)
    r"|[A-Z]\)\s+"                                                 # A)
    r"|[QA]:\s*"                                                   # Q: / A: echoes
    r")"
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`"}
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great question|"
    r"here (?:is|are)|below (?:is|are)|the following|i hope|hope this|let me know|"
    r"in summary|in conclusion|to summari[sz]e|overall,|note:)\b",
    re.IGNORECASE,
)
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_ITALIC = re.compile(r"(?<![*\w])\*(?=\S)([^*]+?)(?<=\S)\*(?![*\w])")

_clip_tokenizer: Any = None
_clip_tokenizer_loaded = False


def _load_clip_tokenizer() -> Any:
    """open_clip's SimpleTokenizer (CLIP's BPE), without importing all of open_clip.

    ``import open_clip`` pulls in timm/torchvision (seconds); its ``tokenizer.py`` has
    only absolute imports, so when open_clip is not loaded yet we execute that one file.
    """
    mod = sys.modules.get("open_clip.tokenizer")
    if mod is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
        file_spec = importlib.util.spec_from_file_location("_alfa_ad_clip_tokenizer", path)
        if file_spec is None or file_spec.loader is None:
            return None
        mod = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(mod)
    return getattr(mod, "_tokenizer", None) or mod.SimpleTokenizer()


def _token_count(text: str) -> int | None:
    """CLIP BPE tokens incl. start/end, or None when open_clip is unavailable."""
    global _clip_tokenizer, _clip_tokenizer_loaded
    if not _clip_tokenizer_loaded:
        _clip_tokenizer_loaded = True
        try:
            _clip_tokenizer = _load_clip_tokenizer()
        except Exception:
            _clip_tokenizer = None
    if _clip_tokenizer is None:
        return None
    return len(_clip_tokenizer.encode(text)) + 2


def _remove_control(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            out.append(" ")          # tabs, NUL, ESC, DEL ... -> space
        elif cat in ("Cf", "Co", "Cs", "Cn"):
            continue                 # zero-width, private-use, surrogates, unassigned
        else:
            out.append(ch)
    return "".join(out)


def _strip_markup(line: str) -> str:
    prev = None
    while prev != line:
        prev = line
        line = line.strip()
        line = _PREFIX.sub("", line, count=1)
        line = _LINK.sub(r"\1", line)
        line = line.replace("**", "").replace("__", "").replace("`", "")
        line = _ITALIC.sub(r"\1", line)
        line = line.strip()
        if len(line) >= 2 and _QUOTES.get(line[0]) == line[-1]:
            line = line[1:-1]
        elif len(line) >= 3 and line[-1] in ".," and _QUOTES.get(line[0]) == line[-2]:
            line = line[1:-2] + line[-1]   # "quoted sentence". -> quoted sentence.
    return line


def _truncate(line: str, max_words: int, max_chars: int) -> str:
    words = line.split()
    if len(words) > max_words:
        words = words[:max_words]
    while words and len(" ".join(words)) > max_chars:
        words.pop()
    n = _token_count(" ".join(words))
    while words and n is not None and n > CLIP_CONTEXT:
        words.pop()
        n = _token_count(" ".join(words))
    out = " ".join(words)
    if len(out) < len(line):
        out = out.rstrip(",;:-\u2013\u2014 ")
    return out


def _dedupe_key(line: str) -> str:
    return " ".join(line.lower().rstrip(" .!;,").split())


def parse_reply(
    text: str | None,
    *,
    min_words: int = 3,
    max_items: int = 40,
    max_words: int = MAX_WORDS,
    max_chars: int = MAX_CHARS,
) -> list[str]:
    """Turn an LLM reply into clean one-line descriptions.

    Strips numbering/bullets, markdown (bold, italics, code, links; heading lines are
    dropped), surrounding quotes and control characters; collapses whitespace; drops
    questions, preambles ("Here are ...:"), lines ending in ':' and lines shorter than
    ``min_words``; truncates at a word boundary to ``max_words`` words, ``max_chars``
    characters and CLIP's 77-token context (when open_clip is importable); removes
    case-insensitive duplicates; keeps at most ``max_items``.
    """
    if not isinstance(text, str):
        return []
    out: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = _remove_control(raw).strip()
        if not line or _HEADING.match(line):
            continue
        line = " ".join(_strip_markup(line).split())
        for sentence in _SENTENCE_BREAK.split(line):
            if _keep(sentence, out, seen, min_words, max_words, max_chars) and len(out) >= max_items:
                return out
    return out


# Small models often put several descriptions on one line: split at sentence ends.
_SENTENCE_BREAK = re.compile(r"(?<=[.!])\s+(?=[A-Z])")


def _keep(line: str, out: list[str], seen: set[str], min_words: int, max_words: int, max_chars: int) -> bool:
    """Append ``line`` to ``out`` if it is a usable, new description; return whether it was."""
    if not line or line.endswith((":", "?")) or _PREAMBLE.match(line):
        return False
    if not any(ch.isalpha() for ch in line) or len(line.split()) < min_words:
        return False
    line = _truncate(line, max_words, max_chars)
    key = _dedupe_key(line)
    if len(line.split()) < min_words or key in seen:
        return False
    seen.add(key)
    out.append(line)
    return True


# --------------------------------------------------------------------------- client
class LLMError(RuntimeError):
    """Generation failed; the message is one line naming the class and the cause."""


@dataclass
class LLMConfig:
    """How to reach the LLM.  ``api_key`` never appears in repr, logs, caches or files.

    ``base_url`` None -> ``$OPENAI_BASE_URL`` or OpenAI's default; ``api_key`` None ->
    ``$OPENAI_API_KEY`` or the placeholder ``"not-needed"`` (fine for local servers).
    ``max_retries`` is the number of retries after the first try.
    """

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    retry_after_cap: float = 60.0
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise ValueError("LLMConfig.model must be a non-empty model name")
        if self.max_retries < 0:
            raise ValueError("LLMConfig.max_retries must be >= 0")
        if self.timeout <= 0:
            raise ValueError("LLMConfig.timeout must be > 0 seconds")
        if self.max_tokens <= 0:
            raise ValueError("LLMConfig.max_tokens must be > 0")

    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"

    def sampling(self) -> dict[str, Any]:
        """Sampling parameters sent with each request (None values are not sent)."""
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                  "top_p": self.top_p, "seed": self.seed}
        return {k: v for k, v in params.items() if v is not None}


def _display_url(url: str) -> str:
    """``url`` without credentials or query string (safe to print and to store)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")
    except ValueError:
        return "<invalid url>"


def _parse_retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


class LLMClient:
    """An ``openai.OpenAI`` chat client with our own bounded retries and backoff."""

    def __init__(self, config: LLMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        self.config = config
        self._openai = openai
        self._sleep = sleep
        self._secrets = [s for s in {config.resolved_api_key(), config.api_key,
                                     os.environ.get("OPENAI_API_KEY")} if s and len(s) >= 4]
        kwargs: dict[str, Any] = {"api_key": config.resolved_api_key(),
                                  "timeout": config.timeout, "max_retries": 0}
        if config.base_url is not None:
            kwargs["base_url"] = config.base_url
        self._client = openai.OpenAI(**kwargs)
        self.base_url = _display_url(str(self._client.base_url))
        self.model = config.model

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r})"

    def scrub(self, text: str) -> str:
        """One line, no secrets, bounded length."""
        text = str(text)
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        text = " ".join(text.split())
        return text if len(text) <= 400 else text[:397] + "..."

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        """Hash of everything that shapes the reply (URL, model, messages, sampling) -- not the key."""
        payload = {"v": 1, "base_url": self.base_url, "model": self.model,
                   "messages": messages, "sampling": self.config.sampling()}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return "llm-reply:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _backoff(self, attempt: int) -> float:
        base = self.config.backoff * (2 ** (attempt - 1))
        return min(self.config.backoff_max, base) * (1.0 + 0.1 * random.random())

    def _connection_cause(self, exc: BaseException) -> str:
        root = _root_cause(exc)
        text = str(root) or type(root).__name__
        if isinstance(root, ConnectionRefusedError) or "refused" in text.lower():
            return f"connection refused at {self.base_url}"
        return f"connection failed at {self.base_url} ({type(root).__name__}: {text})"

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        label: str,
        validate: Callable[[str], bool] | None = None,
    ) -> tuple[str, str]:
        """Ask; return ``(content, served_model)``.  Raise :class:`LLMError` ("{label}: cause").

        Retried (``1 + max_retries`` tries, exponential backoff, Retry-After honoured
        up to ``retry_after_cap``): timeouts, connection errors, HTTP 408/409/429/5xx,
        malformed bodies, empty content, and content that ``validate`` rejects.
        Other HTTP errors (400, 401, 403, 404, ...) fail at once.
        """
        oa = self._openai
        tries = 1 + self.config.max_retries
        cause = "no request made"
        for attempt in range(1, tries + 1):
            wait: float | None = None
            try:
                resp = self._client.chat.completions.create(
                    model=self.model, messages=messages, **self.config.sampling()
                )
            except oa.APITimeoutError:
                cause = f"request timed out after {self.config.timeout:g} s at {self.base_url}"
            except oa.APIConnectionError as e:
                cause = self._connection_cause(e)
            except oa.APIStatusError as e:
                code = e.status_code
                if code == 429:
                    cause = "server returned HTTP 429 (rate limited)"
                    ra = _parse_retry_after(getattr(e.response, "headers", None))
                    if ra is not None:
                        wait = min(ra, self.config.retry_after_cap)
                elif code >= 500 or code in (408, 409):
                    cause = f"server returned HTTP {code}"
                else:
                    detail = getattr(e, "message", "") or str(e)
                    hint = {401: " (authentication failed: check the API key)",
                            404: f" (unknown model {self.model!r} or wrong base URL {self.base_url})"}
                    raise LLMError(self.scrub(
                        f"{label}: server returned HTTP {code}{hint.get(code, '')}: {detail}"
                    )) from None
            except (oa.APIResponseValidationError, ValueError, TypeError, KeyError) as e:
                cause = f"malformed reply from {self.base_url} ({type(e).__name__})"
            else:
                content, served, problem = self._extract(resp)
                if problem is not None:
                    cause = problem
                elif not content.strip():
                    cause = "empty reply"
                elif validate is not None and not validate(content):
                    cause = "reply had no usable description lines"
                else:
                    return content, served
            if attempt < tries:
                self._sleep(self._backoff(attempt) if wait is None else wait)
        raise LLMError(self.scrub(f"{label}: {cause} after {tries} tr{'y' if tries == 1 else 'ies'}"))

    def _extract(self, resp: Any) -> tuple[str, str, str | None]:
        try:
            choice = resp.choices[0]
            content = choice.message.content
            served = getattr(resp, "model", None) or self.model
        except (AttributeError, IndexError, TypeError, KeyError):
            return "", self.model, f"malformed reply from {self.base_url} (no choices[0].message)"
        if content is None:
            return "", str(served), None
        if not isinstance(content, str):
            return "", str(served), f"malformed reply from {self.base_url} (content is not text)"
        return content, str(served), None


# --------------------------------------------------------------------------- generation
def open_reply_cache(cache_dir: str | os.PathLike[str] | None = None):
    """The process-safe reply cache ``<cache_dir>/llm-replies`` (a ``diskcache.Cache``)."""
    import diskcache

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return diskcache.Cache(str(root / "llm-replies"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _merge(groups: Iterable[list[str]], limit: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for group in groups:
        for line in group:
            key = _dedupe_key(line)
            if key not in seen and len(out) < limit:
                seen.add(key)
                out.append(line)
    return out


def generate_class_prompts(
    client: LLMClient,
    class_name: str,
    *,
    cache: Any = None,
    refresh: bool = False,
    max_per_side: int = 40,
) -> dict[str, Any]:
    """Ask every :data:`QUERIES` question about ``class_name``; return the library entry.

    ``cache``: a ``diskcache.Cache`` (or any mapping-like with get/set) or None.
    ``refresh``: ignore cached replies (fresh ones are still written).
    Each successful reply is cached as soon as it arrives, so a class that fails
    on its third query re-asks only the third and later ones next time.
    """
    label = f"class {class_name!r}"
    parsed: dict[str, list[str]] = {}
    records: list[dict[str, str]] = []
    dates: list[str] = []
    for q in QUERIES:
        messages = build_messages(q, class_name)

        def parse(text: str, q: Query = q) -> list[str]:
            return parse_reply(text, min_words=q.min_words, max_items=max_per_side)

        key = client.cache_key(messages)
        hit = None
        if cache is not None and not refresh:
            hit = cache.get(key)
            if not (isinstance(hit, dict) and isinstance(hit.get("content"), str) and parse(hit["content"])):
                hit = None
        if hit is None:
            content, served = client.chat(messages, label=f"{label} ({q.kind} query)",
                                          validate=lambda c: bool(parse(c)))
            hit = {"content": content, "served_model": served, "date": _now()}
            if cache is not None:
                cache.set(key, hit)
        parsed[q.kind] = parse(hit["content"])
        dates.append(str(hit.get("date") or _now()))
        records.append({"kind": q.kind, "query": messages[-1]["content"], "raw_reply": hit["content"]})
    return {
        "class": class_name,
        "normal": _merge([parsed["normal"]], max_per_side),
        # syntactically consistent lines first (the paper found them better), then free-form
        "abnormal": _merge([parsed["abnormal"], parsed["free"]], max_per_side),
        "descriptors": _merge([parsed["descriptors"]], max_per_side),
        "queries": records,
        "model": client.model,
        "base_url": client.base_url,
        "date": max(dates),
    }


class ProgressEvent(NamedTuple):
    index: int          # 1-based position of the class in this run
    total: int
    class_name: str
    status: str         # "skipped" (already in the library) | "generating" | "done" | "failed"
    detail: str = ""    # the error line for "failed"


def _complete(entry: Any, model: str) -> bool:
    return (isinstance(entry, dict) and entry.get("model") == model
            and all(isinstance(entry.get(k), list) and entry.get(k)
                    for k in ("normal", "abnormal", "descriptors")))


def generate_library(
    classes: Iterable[str],
    config: LLMConfig,
    out_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    max_per_side: int = 40,
    client: LLMClient | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Generate (or complete) the library at ``out_path``; return ``(library, errors)``.

    Classes already complete in an existing file (non-empty normal/abnormal/descriptors
    from the same model) are skipped unless ``refresh``.  The file is rewritten
    atomically after each generated class.  ``errors`` maps each failed class to a
    one-line message; the other classes still run.  An existing but invalid library
    file raises :class:`~alfa_ad.prompting.library.LibraryError` (it is not overwritten).
    """
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
            if not refresh and _complete(library["classes"].get(key), config.model):
                report(i, name, "skipped")
                continue
            report(i, name, "generating")
            try:
                entry = generate_class_prompts(client, name, cache=cache, refresh=refresh,
                                               max_per_side=max_per_side)
            except LLMError as e:
                errors[name] = str(e)
                report(i, name, "failed", str(e))
                continue
            library["classes"][key] = entry
            library["generator"] = {"tool": TOOL, "alfa_ad_version": _version()}
            save_library(out, library)
            report(i, name, "done")
    finally:
        cache.close()
    return library, errors
