"""The prompt-source interface.

A prompt source turns a class name into normal and abnormal descriptions.  The
template sources live in :mod:`.templates`; LLM-generated and learned prompts
plug in as further sources with the same two-method shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, runtime_checkable


@dataclass(frozen=True)
class PromptSet:
    """Normal and abnormal prompts for one class, each tagged with its source."""

    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    normal_sources: tuple[str, ...] = field(default=())
    abnormal_sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.normal_sources:
            object.__setattr__(self, "normal_sources", ("?",) * len(self.normal))
        if not self.abnormal_sources:
            object.__setattr__(self, "abnormal_sources", ("?",) * len(self.abnormal))

    @property
    def sources(self) -> dict[str, int]:
        """Number of prompts per source name."""
        counts: dict[str, int] = {}
        for s in self.normal_sources + self.abnormal_sources:
            counts[s] = counts.get(s, 0) + 1
        return counts


@runtime_checkable
class PromptSource(Protocol):
    """Anything with a ``name`` and a ``prompts(class_name) -> PromptSet``."""

    name: str

    def prompts(self, class_name: str) -> PromptSet: ...


def tagged(normal: Iterable[str], abnormal: Iterable[str], source: str) -> PromptSet:
    """A PromptSet whose prompts all come from ``source``."""
    normal, abnormal = tuple(normal), tuple(abnormal)
    return PromptSet(normal, abnormal, (source,) * len(normal), (source,) * len(abnormal))


def combine(sets: Iterable[PromptSet]) -> PromptSet:
    """Concatenate prompt sets, dropping exact duplicates (first source wins)."""
    out: dict[str, list] = {"n": [], "ns": [], "a": [], "as": []}
    seen_n: set[str] = set()
    seen_a: set[str] = set()
    for s in sets:
        for p, src in zip(s.normal, s.normal_sources):
            if p not in seen_n:
                seen_n.add(p)
                out["n"].append(p)
                out["ns"].append(src)
        for p, src in zip(s.abnormal, s.abnormal_sources):
            if p not in seen_a:
                seen_a.add(p)
                out["a"].append(p)
                out["as"].append(src)
    return PromptSet(tuple(out["n"]), tuple(out["a"]), tuple(out["ns"]), tuple(out["as"]))
