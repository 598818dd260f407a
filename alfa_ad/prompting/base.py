"""The prompt-source interface.

A prompt source turns a class name into normal and abnormal descriptions.  The
template sources live in :mod:`.templates`; LLM-generated and learned prompts
plug in as further sources with the same two-method shape.

An entry is either a text, which the detector encodes with the CLIP text tower, or
a *name* (``"learned:abnormal:3"``) whose raw text embedding the source supplies
in :attr:`PromptSet.embeddings` (learned or imported prompt embeddings,
:mod:`.learned`).  Everything downstream (run-time adaptation, kept prompts and
their sources, explanations) treats both kinds alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True)
class PromptSet:
    """Normal and abnormal prompts for one class, each tagged with its source.

    ``embeddings`` maps an entry of ``normal``/``abnormal`` to its precomputed raw
    text embedding (a ``(D,)`` tensor); entries not in it are texts to encode.
    """

    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    normal_sources: tuple[str, ...] = field(default=())
    abnormal_sources: tuple[str, ...] = field(default=())
    embeddings: Mapping[str, Any] = field(default_factory=dict, compare=False)

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
    """Anything with a ``name`` and a ``prompts(class_name) -> PromptSet``.

    Optional members, read through the functions below (a source without them gets the
    default):

    - ``maps_classes`` (default False): the source answers for the library class that
      ``Detector.set_prompt_class`` (``--prompt-class``) names instead of the folder's;
    - ``explains`` (default True): its prompts are candidates ``--explain`` ranks
      (template sources set it False: a template explains nothing);
    - ``descriptors(class_name) -> list[str]`` (default none): further descriptions to rank.
    """

    name: str

    def prompts(self, class_name: str) -> PromptSet: ...


def maps_classes(source: PromptSource) -> bool:
    """Whether ``source`` answers for a ``--prompt-class`` library class."""
    return bool(getattr(source, "maps_classes", False))


def explains(source: PromptSource) -> bool:
    """Whether ``source``'s prompts are explanation candidates."""
    return bool(getattr(source, "explains", True))


def source_descriptors(source: PromptSource, class_name: str) -> list[str]:
    """``source``'s descriptors of ``class_name`` (none when it has no ``descriptors``)."""
    describe = getattr(source, "descriptors", None)
    return list(describe(class_name)) if describe is not None else []


def tagged(normal: Iterable[str], abnormal: Iterable[str], source: str) -> PromptSet:
    """A PromptSet whose prompts all come from ``source``."""
    normal, abnormal = tuple(normal), tuple(abnormal)
    return PromptSet(normal, abnormal, (source,) * len(normal), (source,) * len(abnormal))


def combine(sets: Iterable[PromptSet]) -> PromptSet:
    """Concatenate prompt sets.  Each source's own list is taken as given; a prompt
    an earlier source already gave is dropped (the first source wins)."""
    normal: list[str] = []
    abnormal: list[str] = []
    normal_src: list[str] = []
    abnormal_src: list[str] = []
    embeddings: dict[str, Any] = {}
    for s in sets:
        seen_n, seen_a = set(normal), set(abnormal)
        for p, src in zip(s.normal, s.normal_sources):
            if p not in seen_n:
                normal.append(p)
                normal_src.append(src)
        for p, src in zip(s.abnormal, s.abnormal_sources):
            if p not in seen_a:
                abnormal.append(p)
                abnormal_src.append(src)
        for name, emb in s.embeddings.items():
            embeddings.setdefault(name, emb)
    kept = set(normal) | set(abnormal)
    embeddings = {k: v for k, v in embeddings.items() if k in kept}
    return PromptSet(tuple(normal), tuple(abnormal), tuple(normal_src), tuple(abnormal_src), embeddings)
