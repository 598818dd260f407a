"""Class names for language models: the benchmark class sets, the name used in queries,
aliases that count as naming the class, and a one-line class context.

A dataset folder name is not always a word a language model knows (``pcb1``,
``chewinggum``, ``macaroni2``).  :data:`CLASS_INFO` gives, for the MVTec AD and
VisA classes, the object's everyday name (used in queries), aliases (a prompt
that names an alias names the class) and a short context sentence (what the
images show), which the queries and the VLM request include.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

from ..prompting.templates import readable_class_name

__all__ = ["MVTEC_CLASSES", "VISA_CLASSES", "CLASS_INFO", "resolve_classes", "query_name",
           "class_aliases", "class_context", "names_class", "article"]

MVTEC_CLASSES: list[str] = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]
VISA_CLASSES: list[str] = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]
_CLASS_SETS = {"mvtec": MVTEC_CLASSES, "visa": VISA_CLASSES}

_PCB = {"name": "printed circuit board", "aliases": ["PCB", "circuit board"],
        "context": "a printed circuit board with electronic components, photographed from above"}

# name: used in queries; aliases: also count as naming the class; context: what the images show.
CLASS_INFO: dict[str, dict[str, Any]] = {
    "bottle": {"context": "a glass bottle photographed from above, looking into its opening"},
    "cable": {"aliases": ["wire"], "context": "the cut end of a cable with three coloured insulated wires"},
    "capsule": {"aliases": ["pill"], "context": "a single medicine capsule with printed text on it"},
    "carpet": {"aliases": ["rug"], "context": "a close-up of a woven carpet texture"},
    "grid": {"aliases": ["mesh", "wire mesh"], "context": "a close-up of a metal grid (wire mesh)"},
    "hazelnut": {"aliases": ["nut", "hazel nut"], "context": "a single hazelnut in its shell"},
    "leather": {"context": "a close-up of a leather surface"},
    "metal_nut": {"aliases": ["nut"], "context": "a metal nut (a fastener) photographed from above"},
    "pill": {"aliases": ["tablet"], "context": "a single oval pill (tablet) with printed letters"},
    "screw": {"aliases": ["bolt"], "context": "a single metal screw lying on a flat surface"},
    "tile": {"context": "a close-up of a ceramic tile surface"},
    "toothbrush": {"aliases": ["tooth brush", "brush"], "context": "the head of a toothbrush with its bristles"},
    "transistor": {"context": "an electronic transistor with metal leads mounted on a board"},
    "wood": {"aliases": ["wooden"], "context": "a close-up of a wooden surface with its grain"},
    "zipper": {"aliases": ["zip"], "context": "a close-up of a zipper with its teeth and fabric"},
    "candle": {"context": "white candles photographed from above"},
    "capsules": {"aliases": ["capsule"], "context": "several green capsules lying together"},
    "cashew": {"aliases": ["cashew nut"], "context": "a single cashew nut"},
    "chewinggum": {"name": "chewing gum", "aliases": ["gum"], "context": "a piece of chewing gum"},
    "fryum": {"aliases": ["snack"], "context": "a fryum, a wheel-shaped fried snack"},
    "macaroni1": {"name": "macaroni", "aliases": ["pasta"], "context": "pieces of dry macaroni pasta on a tray"},
    "macaroni2": {"name": "macaroni", "aliases": ["pasta"],
                  "context": "pieces of dry macaroni pasta on a textured background"},
    "pcb1": _PCB, "pcb2": _PCB, "pcb3": _PCB, "pcb4": _PCB,
    "pipe_fryum": {"aliases": ["fryum", "snack"], "context": "a pipe fryum, a tube-shaped fried snack"},
}


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


def _info(class_name: str) -> dict[str, Any]:
    return CLASS_INFO.get(class_name) or CLASS_INFO.get(readable_class_name(class_name).lower().replace(" ", "_"), {})


def query_name(class_name: str) -> str:
    """The object's name in queries: the everyday name when one is known, else the readable folder name."""
    return str(_info(class_name).get("name") or readable_class_name(class_name))


def class_aliases(class_name: str, extra: Iterable[str] = ()) -> list[str]:
    """Names that count as naming the class: query name and known aliases, then ``extra``."""
    out: list[str] = []
    for name in [query_name(class_name), *_info(class_name).get("aliases", []), *extra]:
        name = " ".join(str(name).split())
        if name and name.lower() != readable_class_name(class_name).lower() and name not in out:
            out.append(name)
    return out


def class_context(class_name: str) -> str:
    """A one-line description of what the images of this class show ("" when unknown)."""
    return str(_info(class_name).get("context", ""))


def article(word: str) -> str:
    """``a`` or ``an`` for the following word (by its first letter; PCB/an exceptions aside)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _name_pattern(name: str) -> str:
    words = [re.escape(w) for w in re.split(r"[\s_-]+", name.strip()) if w]
    if not words:
        return ""
    joined = r"[\s_-]*".join(words)       # "metal nut" matches "metal-nut", "metalnut"
    return rf"(?<![\w]){joined}(?:s|es)?(?![\w])"


def names_class(text: str, class_name: str, aliases: Iterable[str] = ()) -> bool:
    """Whether ``text`` names the class (readable name, query name or an alias, plural allowed)."""
    names = [readable_class_name(class_name), *class_aliases(class_name, aliases)]
    pattern = "|".join(p for p in (_name_pattern(n) for n in names) if p)
    return bool(pattern) and re.search(pattern, text, flags=re.IGNORECASE) is not None
