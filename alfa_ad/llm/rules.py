"""Normality rules (seed 001: task description, class context and normality rules as prompts).

A rules file says what a normal object of a class must look like ("exactly two
screws", "the label is centred and straight", "no text on the cap").  Two forms:

* **plain text** -- one rule per line; ``#`` starts a comment; a line ``[class]``
  starts the rules of that class; lines before any ``[class]`` header (or under
  ``[*]``) apply to every class::

      the object is fully inside the image
      [screw]
      exactly one screw
      the thread is continuous

* **YAML** (``.yaml``/``.yml``, needs PyYAML: ``pip install "alfa-ad[rules]"``) -- a
  mapping from class name (or ``"*"`` for every class) to a rule or a list of rules::

      "*": the object is fully inside the image
      screw: [exactly one screw, the thread is continuous]

Class names match like prompt-library keys (``metal_nut`` == ``metal nut``).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

from ..io.paths import read_text_file
from ..prompting.library import class_key

__all__ = ["RulesError", "Rules", "load_rules", "parse_rules_text"]

ALL = "*"
MAX_RULE_CHARS = 200


class RulesError(ValueError):
    """A rules file that cannot be used; the message is one line naming the file."""


class Rules:
    """Rules per class (canonical keys) plus rules for every class."""

    def __init__(self, per_class: dict[str, list[str]] | None = None, source: str = "") -> None:
        self.per_class: dict[str, list[str]] = {}
        for name, rules in (per_class or {}).items():
            key = ALL if name == ALL else class_key(name)
            bucket = self.per_class.setdefault(key, [])
            bucket += [r for r in rules if r not in bucket]
        self.source = source

    def for_class(self, class_name: str) -> list[str]:
        """Rules that apply to ``class_name``: the general ones first, then its own."""
        out = list(self.per_class.get(ALL, []))
        out += [r for r in self.per_class.get(class_key(class_name), []) if r not in out]
        return out

    def __bool__(self) -> bool:
        return any(self.per_class.values())

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.per_class.items()}


def _clean_rule(text: str, where: str) -> str:
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise RulesError(f"{where}: rule {text!r} contains control characters")
    rule = " ".join(text.split()).rstrip(".;")
    if len(rule) > MAX_RULE_CHARS:
        raise RulesError(f"{where}: rule longer than {MAX_RULE_CHARS} characters: {rule[:40]!r}...")
    return rule


def parse_rules_text(text: str, where: str = "rules") -> Rules:
    """Parse the plain-text form (see the module docstring)."""
    per: dict[str, list[str]] = {}
    current = ALL
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if not name:
                raise RulesError(f"{where}: line {lineno}: empty class header '[]'")
            current = ALL if name == ALL else name
            continue
        line = line.lstrip("-*\u2022 ").strip()
        if line:
            per.setdefault(current, []).append(_clean_rule(line, f"{where}: line {lineno}"))
    return Rules(per, where)


def _parse_yaml(text: str, where: str) -> Rules:
    try:
        import yaml
    except ImportError:
        raise RulesError(f"{where}: YAML rules need PyYAML (pip install 'alfa-ad[rules]'), "
                         "or write the rules as plain text") from None
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RulesError(f"{where}: malformed YAML{at}") from None
    if data is None:
        return Rules({}, where)
    if not isinstance(data, dict):
        raise RulesError(f"{where}: expected a mapping from class name to rules, found {type(data).__name__}")
    per: dict[str, list[str]] = {}
    for name, value in data.items():
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise RulesError(f"{where}: class {name!r}: expected a rule or a list of rules (strings)")
        per[str(name)] = [_clean_rule(v, f"{where}: class {name!r}") for v in items if v.strip()]
    return Rules(per, where)


def load_rules(path: str | os.PathLike[str]) -> Rules:
    """Read a rules file (YAML by extension, else plain text); :class:`RulesError` names the file."""
    p = Path(path)
    where = f"rules file {p}"
    text = read_text_file(p, where, RulesError)
    rules = _parse_yaml(text, where) if p.suffix.lower() in (".yaml", ".yml") else parse_rules_text(text, where)
    if not rules:
        raise RulesError(f"{where}: no rules found")
    return rules
