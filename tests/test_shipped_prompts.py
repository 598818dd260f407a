"""The shipped prompt libraries (prompts/mvtec.json, prompts/visa.json): counts, names, provenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from alfa_ad.prompting.classes import MVTEC_CLASSES, VISA_CLASSES, names_class
from alfa_ad.prompting.filters import near_key
from alfa_ad.prompting.library import load_library
from alfa_ad.prompting.parse import _token_count

ROOT = Path(__file__).resolve().parents[1] / "prompts"
LIBRARIES = [("mvtec.json", MVTEC_CLASSES), ("visa.json", VISA_CLASSES)]


@pytest.mark.parametrize("name, classes", LIBRARIES)
def test_shipped_library_counts_and_names(name, classes):
    lib = load_library(ROOT / name)
    assert sorted(lib["classes"]) == sorted(classes)
    for side in ("normal", "abnormal"):
        counts = {c: len(e[side]) for c, e in lib["classes"].items()}
        assert min(counts.values()) >= 16, (side, counts)
        assert sum(counts.values()) / len(counts) >= 70, (side, counts)
    for cls, entry in lib["classes"].items():
        for side in ("normal", "abnormal"):
            prompts = entry[side]
            assert len({near_key(p) for p in prompts}) == len(prompts), (cls, side)   # distinct
            for p in prompts:
                assert names_class(p, cls, entry.get("aliases", [])), (cls, side, p)
                n = _token_count(p)
                assert n is None or n <= 77, (cls, p)
        assert entry["descriptors"]


@pytest.mark.parametrize("name, classes", LIBRARIES)
def test_shipped_library_provenance_is_auditable(name, classes):
    lib = load_library(ROOT / name)
    for cls, entry in lib["classes"].items():
        assert entry["model"] and entry["base_url"].startswith("http") and entry["date"]
        assert entry["settings"]["temperatures"] and entry["settings"]["style"] in ("chat", "chatml")
        kept = {"normal": [], "abnormal": []}
        for q in entry["queries"]:
            assert q["raw_reply"] and q["messages"] and "temperature" in q["sampling"]
            if q["side"] in kept:
                for d in q["sentences"]:
                    assert d["decision"] in ("kept", "rewritten", "dropped", "duplicate")
                    if d["decision"] in ("kept", "rewritten"):
                        kept[q["side"]].append(d["prompt"])
        # every prompt of the library is traceable to a reply sentence and its decision
        for side in ("normal", "abnormal"):
            assert kept[side] == entry[side], (cls, side)
