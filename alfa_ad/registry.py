"""One registry of the interchangeable parts: methods (and, as they are added,
aligners, few-shot scorers, backends, engines).

Entries are registered by import path (``"package.module:attribute"``) and imported
only when used, so optional extras (onnxruntime, ray, ...) cost nothing until asked
for, and this module imports nothing heavy.  The CLI validates and documents its
choices from here, and :meth:`alfa_ad.Detector.from_config` builds from here, so a
run's record rebuilds the detector that wrote it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute"
    help: str


class Registry:
    """Name -> lazily imported class or factory of one kind of part."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: str, help: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, help)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` if registered, else ``ValueError`` listing the choices (one line)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")
        return name

    def get(self, name: str) -> Any:
        """The registered object (imported on first use)."""
        entry = self._entries[self.check(name)]
        module, _, attr = entry.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def help(self) -> str:
        """``name: help; name: help`` for CLI option texts."""
        return "; ".join(f"{e.name}: {e.help}" if e.help else e.name for e in self._entries.values())


METHODS = Registry("method")
METHODS.add("alfa", "alfa_ad.methods.alfa:AlfaMethod",
            "ALFA (run-time prompt adaptation, fine-grained aligner, eq. 12)")
METHODS.add("winclip", "alfa_ad.methods.winclip:WinClipMethod", "WinCLIP / WinCLIP+ baseline")
