"""Turning LLM replies into clean one-line descriptions (markup, numbering, CLIP's context)."""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

__all__ = ["MAX_WORDS", "MAX_CHARS", "CLIP_CONTEXT", "parse_reply", "split_reply", "is_preamble", "fit_clip",
           "dedupe_key"]

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


def clip_token_count(text: str) -> int | None:
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
    n = clip_token_count(" ".join(words))
    while words and n is not None and n > CLIP_CONTEXT:
        words.pop()
        n = clip_token_count(" ".join(words))
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



def split_reply(text: str | None) -> list[str]:
    """Every sentence of a reply, cleaned (markup, numbering, control characters) but not yet judged.

    Heading lines and empty lines are left out; nothing else is dropped, so a caller
    can record a decision for every sentence.
    """
    if not isinstance(text, str):
        return []
    out: list[str] = []
    for raw in text.splitlines():
        line = _remove_control(raw).strip()
        if not line or _HEADING.match(line):
            continue
        line = " ".join(_strip_markup(line).split())
        out += [s for s in _SENTENCE_BREAK.split(line) if s.strip()]
    return out


def is_preamble(line: str) -> bool:
    """Questions, "Here are ...:" lines, lines ending in ':' and lines without letters."""
    return (not any(ch.isalpha() for ch in line) or line.endswith((":", "?"))
            or _PREAMBLE.match(line) is not None)


def fit_clip(line: str, max_words: int = MAX_WORDS, max_chars: int = MAX_CHARS) -> str:
    """``line`` cut at a word boundary to ``max_words``, ``max_chars`` and CLIP's 77 tokens."""
    return _truncate(line, max_words, max_chars)


def dedupe_key(line: str) -> str:
    """Case- and trailing-punctuation-insensitive key for exact duplicates."""
    return _dedupe_key(line)
