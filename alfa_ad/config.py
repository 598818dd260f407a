"""The detector's configuration as data: what ``Detector`` is built from and what every
run records, so that ``Detector.from_config(record)`` rebuilds the detector of a run.

No torch here; defaults for the model name live in :mod:`alfa_ad.model.names`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .registry import METHODS


@dataclass
class DetectorConfig:
    """Every option that changes what a :class:`~alfa_ad.Detector` computes.

    ``options`` holds method-specific keyword arguments (``text_projection``,
    ``use_text``, ``anomalib_compat``, ...), passed to the method's constructor.
    """

    method: str = "alfa"
    model: str | None = DEFAULT_MODEL  # None: the default, or the one a checkpoint's manifest names
    pretrained: str = DEFAULT_PRETRAINED
    checkpoint: str | None = None
    weights: str = "pretrained"
    seed: int = 0
    device: str | None = None
    scales: tuple[int, ...] = (2, 3)
    tile: str = "auto"
    prompts: str | None = None
    llm_prompts: bool = True
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        METHODS.check(self.method)
        self.scales = tuple(int(s) for s in self.scales)
        self.tile = str(self.tile)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.options = dict(self.options)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        out = asdict(self)
        out["scales"] = list(self.scales)
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "DetectorConfig":
        """From :meth:`as_dict` output (or a run record's ``detector`` entry); unknown keys
        are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"unknown detector option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(record))
