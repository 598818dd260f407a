"""The shipped prompt libraries (prompts/mvtec.json, prompts/visa.json): counts, names, provenance.

Class entries written by the current generation procedure carry ``"settings"``;
every such entry must name its class in every prompt, be free of duplicates, fit
CLIP's context and trace each prompt to a reply sentence.  The paper-scale counts
(every class >= 16 LLM prompts per side, mean >= 70) are checked over the whole
file, which must be regenerated for every class.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alfa_ad.llm.classes import MVTEC_CLASSES, VISA_CLASSES, names_class
from alfa_ad.llm.filters import near_key
from alfa_ad.prompting.library import load_library
from alfa_ad.llm.parse import clip_token_count

ROOT = Path(__file__).resolve().parents[1] / "prompts"
LIBRARIES = [("mvtec.json", MVTEC_CLASSES), ("visa.json", VISA_CLASSES)]


def _regenerated(lib: dict) -> dict[str, dict]:
    return {c: e for c, e in lib["classes"].items() if isinstance(e.get("settings"), dict)}


def _complete(lib: dict, classes: list[str]) -> bool:
    return sorted(_regenerated(lib)) == sorted(classes)


@pytest.mark.parametrize("name, classes", LIBRARIES)
def test_shipped_library_has_every_class(name, classes):
    lib = load_library(ROOT / name)
    assert sorted(lib["classes"]) == sorted(classes)
    for entry in lib["classes"].values():
        assert entry["normal"] and entry["abnormal"] and entry["descriptors"]


@pytest.mark.parametrize("name, classes", LIBRARIES)
def test_regenerated_entries_name_their_class_and_are_auditable(name, classes):
    lib = load_library(ROOT / name)
    for cls, entry in _regenerated(lib).items():
        assert entry["model"] and entry["base_url"].startswith("http") and entry["date"]
        assert entry["settings"]["temperatures"] and entry["settings"]["style"] in ("chat", "chatml")
        kept: dict[str, list[str]] = {"normal": [], "abnormal": []}
        for q in entry["queries"]:
            assert q["raw_reply"] and q["messages"] and "temperature" in q["sampling"]
            if q["side"] in kept:
                for d in q["sentences"]:
                    assert d["decision"] in ("kept", "rewritten", "dropped", "duplicate")
                    if d["decision"] in ("kept", "rewritten"):
                        kept[q["side"]].append(d["prompt"])
        for side in ("normal", "abnormal"):
            prompts = entry[side]
            assert kept[side] == prompts, (cls, side)      # every prompt traces back to a reply sentence
            assert len({near_key(p) for p in prompts}) == len(prompts), (cls, side)
            for p in prompts:
                assert names_class(p, cls, entry.get("aliases", [])), (cls, side, p)
                n = clip_token_count(p)
                assert n is None or n <= 77, (cls, p)


@pytest.mark.parametrize("name, classes", LIBRARIES)
def test_shipped_library_counts(name, classes):
    lib = load_library(ROOT / name)
    assert _complete(lib, classes), f"{name}: {len(_regenerated(lib))} of {len(classes)} classes regenerated"
    for side in ("normal", "abnormal"):
        counts = {c: len(e[side]) for c, e in lib["classes"].items()}
        assert min(counts.values()) >= 16, (side, counts)
        assert sum(counts.values()) / len(counts) >= 70, (side, counts)
