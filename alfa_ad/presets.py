"""Named detector presets: configurations one flag away (``--preset NAME``,
``DetectorConfig(preset=NAME)``).

A preset sets the fields it names (method options merged into ``options``); every other
option applies as given.  The run record keeps the preset's name and the resolved
fields, so ``Detector.from_config(record)`` rebuilds the same detector.  No torch here.
"""

from __future__ import annotations

from typing import Any, Mapping

PRESETS: dict[str, dict[str, Any]] = {
    # ALFA as the paper writes it (docs/method.md): eq. (4)'s per-image selection used for the
    # image-level score and for every window, masked windows at scales 2 and 3, the text
    # carried into each window's space (our rank-1 reading of W_T), template + LLM prompts,
    # the map from the windows alone (eq. 11 aggregated), smoothed with sigma 4 model pixels
    "paper": {"method": "alfa", "contextual": "all", "aligner": "masked", "scales": (2, 3), "llm_prompts": True,
              "options": {"text_projection": "rank1", "sigma": 4.0, "global_in_map": False}},
}


def preset_fields(name: str) -> Mapping[str, Any]:
    """The fields preset ``name`` sets; a one-line error listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
