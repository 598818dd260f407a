"""The ALFA grid of ``alfa-ad ablate`` as data: one :class:`AblationConfig` per row (prompt
sources, eq. 4 placement, aligner, window scales and strides, text projection, the image
score in the map, refinement); :mod:`alfa_ad.ablation` runs it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .scoring.placement import DEFAULT_PLACEMENT
from .scoring.window_spec import ALFA_SCALES, ALFA_STRIDES, parse_strides

TEMPLATES, LLM, LEARNED = "template", "llm", "learned"

__all__ = ["AblationConfig", "FULL", "GRID", "LEARNED", "LLM", "PAPER", "TEMPLATES", "applicable"]


@dataclass(frozen=True)
class AblationConfig:
    """One row of the grid."""

    name: str
    sources: tuple[str, ...] = (TEMPLATES, LLM)
    contextual: str = DEFAULT_PLACEMENT  # where eq. (4) applies (scoring/placement.py)
    aligner: str = "masked"
    scales: tuple[int, ...] = ALFA_SCALES
    text_projection: str = "none"
    global_in_map: bool = True  # the image-level score as one more term of the map's harmonic mean
    refine: bool = False  # anomaly region refinement with the default blocks (scoring/refine.py)
    strides: tuple[int, ...] | None = None  # per scale; None: the default's with the default scales, else 1

    @property
    def windows(self) -> tuple[tuple[int, int], ...]:
        """``(scale, stride)`` of each window scale."""
        default = ALFA_STRIDES if self.scales == ALFA_SCALES else None  # given scales: stride 1
        return tuple(zip(self.scales, parse_strides(self.strides or default, self.scales)))

    def describe(self) -> dict[str, str]:
        return {"configuration": self.name, "prompt sources": " + ".join(self.sources),
                "S_c": self.contextual, "aligner": self.aligner, "global in map": "yes" if self.global_in_map else "no",
                "scales": ",".join(str(s) for s, _ in self.windows),
                "window strides": ",".join(str(t) for _, t in self.windows),
                "text projection": self.text_projection,
                "refine": "yes" if self.refine else "no"}


FULL = AblationConfig("alfa-ad default", (TEMPLATES,))
PAPER = AblationConfig("paper preset (S_c everywhere, scales 2,3, rank-1, no image score in the map; "
                       "the run's sigma)",
                       (TEMPLATES, LLM), "all", "masked", (2, 3), "rank1", False)

# The grid: Table 2 (prompt sources x contextual scoring x aligner on/off, S_c as the paper
# places it: "all"), the default and one change at a time from it (eq. 4 placement, LLM
# prompts, aligners, scales, text projection, the image score in the map), the paper
# preset, and learned prompts when a class has them.
GRID: tuple[AblationConfig, ...] = (
    AblationConfig("templates", (TEMPLATES,), "off", "none"),
    AblationConfig("templates + S_c", (TEMPLATES,), "all", "none"),
    AblationConfig("templates + LLM", (TEMPLATES, LLM), "off", "none"),
    AblationConfig("templates + LLM + S_c", (TEMPLATES, LLM), "all", "none"),
    AblationConfig("templates + aligner", (TEMPLATES,), "off", "masked", (2, 3), global_in_map=False),
    AblationConfig("templates + S_c + aligner", (TEMPLATES,), "all", "masked", (2, 3), global_in_map=False),
    AblationConfig("templates + LLM + aligner", (TEMPLATES, LLM), "off", "masked", (2, 3), global_in_map=False),
    AblationConfig("templates + LLM + S_c + aligner", (TEMPLATES, LLM), "all", "masked", (2, 3),
                   global_in_map=False),
    FULL,
    AblationConfig("default, S_c global", (TEMPLATES,), "global"),
    AblationConfig("default, S_c soft", (TEMPLATES,), "soft"),
    AblationConfig("default, S_c all", (TEMPLATES,), "all"),
    AblationConfig("default + LLM prompts", (TEMPLATES, LLM)),
    AblationConfig("default, value aligner", (TEMPLATES,), aligner="value"),
    AblationConfig("default, dense aligner", (TEMPLATES,), aligner="dense"),
    AblationConfig("default, scales 2,3", (TEMPLATES,), scales=(2, 3)),
    AblationConfig("default, scales 2", (TEMPLATES,), scales=(2,)),
    AblationConfig("default, every window at stride 1", (TEMPLATES,), strides=(1,)),
    AblationConfig("default, rank-1 text projection", (TEMPLATES,), text_projection="rank1"),
    AblationConfig("default, image score not in the map", (TEMPLATES,), global_in_map=False),
    PAPER,
    AblationConfig("default + learned prompts", (TEMPLATES, LEARNED)),
    AblationConfig("default + refinement", (TEMPLATES,), refine=True),
)


def applicable(grid: Sequence[AblationConfig], available: set[str]) -> list[AblationConfig]:
    """The grid with each configuration's prompt sources cut to those the data has; a
    configuration that then repeats an earlier one (or has no source left) is dropped."""
    out, seen = [], set()
    for cfg in grid:
        sources = tuple(s for s in cfg.sources if s in available)
        key = (sources, cfg.contextual, cfg.aligner, cfg.windows, cfg.text_projection, cfg.global_in_map, cfg.refine)
        if sources and key not in seen:
            seen.add(key)
            out.append(replace(cfg, sources=sources))
    return out
