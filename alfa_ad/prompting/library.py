"""The versioned prompt-library file written by ``alfa-ad generate-prompts``.

Format (JSON, UTF-8)::

    {
      "format": "alfa-ad-prompts",
      "version": 1,
      "generator": {"tool": "alfa-ad generate-prompts", "alfa_ad_version": "0.1.0"},
      "classes": {
        "metal_nut": {
          "class": "metal_nut",
          "normal": ["A normal image of metal nut with ...", ...],
          "abnormal": ["An abnormal image of metal nut with ...", ...],
          "descriptors": ["scratches on the surface", ...],
          "queries": [{"kind": "free", "query": "How to identify ...", "raw_reply": "..."}, ...],
          "model": "gpt-3.5-turbo",
          "base_url": "http://127.0.0.1:8080/v1",
          "date": "2026-01-01T12:00:00+00:00"
        }
      }
    }

Only ``normal`` and ``abnormal`` (lists of strings) are required per class;
``descriptors`` is optional (a list of strings); other keys are kept as-is.
The file never holds an API key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io.atomic import atomic_write_text
from ..io.paths import read_text_file
from .base import PromptSet, tagged
from .templates import readable_class_name

__all__ = [
    "FORMAT", "VERSION", "TOOL", "LibraryError", "new_library", "validate_library",
    "load_library", "save_library", "class_key", "find_class", "LLMPromptSource", "shipped_libraries", "library_sources",
]

FORMAT = "alfa-ad-prompts"
VERSION = 1
TOOL = "alfa-ad generate-prompts"


class LibraryError(ValueError):
    """A prompt-library file that cannot be used; the message is one line naming the file."""


def new_library() -> dict[str, Any]:
    """An empty library in the current format."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "generator": {"tool": TOOL, "alfa_ad_version": __version__},
        "classes": {},
    }


def class_key(name: str) -> str:
    """Canonical lookup key: ``metal_nut``, ``metal nut`` and ``Metal-Nut`` are one class."""
    return readable_class_name(str(name)).lower()


def find_class(library: dict[str, Any], name: str) -> str | None:
    """The key under which ``library`` stores class ``name`` (exact first, then canonical)."""
    classes = library.get("classes", {})
    if name in classes:
        return name
    want = class_key(name)
    for key in classes:
        if class_key(key) == want:
            return key
    return None


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def validate_library(library: Any, where: str = "prompt library") -> None:
    """Raise :class:`LibraryError` (``"{where}: reason"``) unless ``library`` is well formed."""

    def fail(reason: str) -> None:
        raise LibraryError(f"{where}: {reason}")

    if not isinstance(library, dict):
        fail(f"expected a JSON object at the top level, found {type(library).__name__}")
    fmt = library.get("format")
    if fmt != FORMAT:
        fail(f"not an alfa-ad prompt library (format is {fmt!r}, expected {FORMAT!r})")
    version = library.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        fail(f"missing or non-integer 'version' ({version!r})")
    if version != VERSION:
        fail(f"unsupported version {version} (this alfa-ad reads version {VERSION})")
    classes = library.get("classes")
    if not isinstance(classes, dict):
        fail("'classes' must be an object mapping class names to prompt lists")
    for name, entry in classes.items():
        if not isinstance(entry, dict):
            fail(f"class {name!r}: expected an object, found {type(entry).__name__}")
        for side in ("normal", "abnormal"):
            if not _str_list(entry.get(side)):
                fail(f"class {name!r}: {side!r} must be a list of strings")
        if "descriptors" in entry and not _str_list(entry["descriptors"]):
            fail(f"class {name!r}: 'descriptors' must be a list of strings")


def load_library(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a library file; :class:`LibraryError` names the file on any problem."""
    p = Path(path)
    where = f"prompt library {p}"
    text = read_text_file(p, where, LibraryError)
    try:
        library = json.loads(text)
    except json.JSONDecodeError as e:
        raise LibraryError(f"{where}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    validate_library(library, where)
    return library


def save_library(path: str | os.PathLike[str], library: dict[str, Any]) -> Path:
    """Validate, then atomically write ``library`` as pretty UTF-8 JSON."""
    validate_library(library, f"prompt library {Path(path)} (not written)")
    text = json.dumps(library, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


class LLMPromptSource:
    """A :class:`~alfa_ad.prompting.base.PromptSource` backed by a prompt library.

    ``library`` is a loaded library dict or a path to a library file.  Unknown
    classes give an empty :class:`PromptSet` (no prompts), so this source can be
    combined with the template sources without failing on classes it lacks.
    """

    maps_classes = True  # answers for the library class --prompt-class names

    def __init__(self, library: dict[str, Any] | str | os.PathLike[str], name: str = "llm") -> None:
        if isinstance(library, (str, os.PathLike)):
            library = load_library(library)
        else:
            validate_library(library)
        self.library = library
        self.name = name

    def _entry(self, class_name: str) -> dict[str, Any] | None:
        key = find_class(self.library, class_name)
        return None if key is None else self.library["classes"][key]

    def classes(self) -> list[str]:
        return list(self.library["classes"])

    def has_class(self, class_name: str) -> bool:
        return self._entry(class_name) is not None

    def prompts(self, class_name: str) -> PromptSet:
        entry = self._entry(class_name)
        if entry is None:
            return tagged((), (), self.name)
        return tagged(entry["normal"], entry["abnormal"], self.name)

    def descriptors(self, class_name: str) -> list[str]:
        entry = self._entry(class_name)
        return [] if entry is None else list(entry.get("descriptors", []))


def shipped_libraries() -> list[Path]:
    """Prompt libraries shipped in the repository's ``prompts/`` (or ``$ALFA_AD_PROMPTS``)."""
    folder = Path(os.environ.get("ALFA_AD_PROMPTS", Path(__file__).resolve().parents[2] / "prompts"))
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def library_sources(config: Any, backbone: Any = None) -> list[LLMPromptSource]:
    """The ``llm`` entry of :data:`alfa_ad.registry.PROMPT_SOURCES`: the config's ``prompts``
    file, else every shipped library."""
    files = [Path(config.prompts)] if config.prompts else shipped_libraries()
    return [LLMPromptSource(load_library(f)) for f in files]
