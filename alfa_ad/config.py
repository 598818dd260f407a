"""The detector's configuration as data: what ``Detector`` is built from and what every
run records, so that ``Detector.from_config(record)`` rebuilds the detector of a run.

No torch here; defaults for the model name live in :mod:`alfa_ad.model.names`.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping

from .model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .presets import PRESETS, preset_fields
from .scoring.placement import PLACEMENTS, parse_placement
from .scoring.refine_spec import parse_layers
from .scoring.window_spec import ALFA_SCALES, parse_strides
from .registry import ALIGNERS, DEFAULT_ALIGNER, DEFAULT_FEW_SHOT_SCORER, FEW_SHOT_SCORERS, METHODS, PROMPT_SOURCES


class ConfigFieldError(ValueError):
    """A bad value of one :class:`DetectorConfig` field.  ``str()`` is the one-line message;
    ``field`` and ``problem`` (the message without the field, e.g. ``must be one of alfa,
    winclip, got 'x'``) let a front end name the field its own way (``--few-shot-scorer``)."""

    def __init__(self, field: str, problem: str, message: str | None = None) -> None:
        super().__init__(message or f"{field} {problem}")
        self.field = field
        self.problem = problem


def _choice(field: str, value: Any, choices: Iterable[str], check: Callable[[Any], Any]) -> Any:
    """``check(value)``, its ValueError (message kept) as a :class:`ConfigFieldError` of ``field``."""
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigFieldError(field, f"must be one of {', '.join(choices)}, got {value!r}", str(exc)) from None


def parse_batch_size(value: int | str) -> int | str:
    """An integer >= 1 or ``"auto"`` (batch size chosen by memory); a one-line error otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    problem = f"must be an integer >= 1 or auto, got {value!r}"
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigFieldError("batch_size", problem) from None
    if size < 1 or (isinstance(value, float) and value != size):
        raise ConfigFieldError("batch_size", problem)
    return size


@dataclass
class DetectorConfig:
    """Every option that changes what a :class:`~alfa_ad.Detector` computes.

    ``options`` holds method-specific keyword arguments (``text_projection``,
    ``use_text``, ``anomalib_compat``, ...), passed to the method's constructor.
    """

    method: str = "alfa"
    aligner: str = DEFAULT_ALIGNER  # local embeddings (ALFA's fine-grained aligner; WinCLIP's windows)
    model: str | None = DEFAULT_MODEL  # None: the default, or the one a checkpoint's manifest names
    pretrained: str | None = DEFAULT_PRETRAINED  # a built detector records None unless pretrained weights loaded
    checkpoint: str | None = None
    weights: str = "pretrained"
    seed: int = 0
    device: str | None = None
    scales: tuple[int, ...] | None = None  # window sizes in patches; None: the method's default
    # windows every stride patches, one per scale (or one for all); None: the method's default
    # with its default scales, stride 1 with given ones (a built detector records them)
    window_strides: tuple[int, ...] | None = None
    tile: str = "auto"
    prompts: str | None = None
    llm_prompts: bool = False  # ALFA: add the LLM prompt libraries (a ``prompts`` file implies it)
    learned: str | None = None  # learned / imported prompt-embedding file (prompting/learned.py)
    batch_size: int | str = 8  # or "auto": chosen by memory (alfa_ad/model/batch_memory.py)
    options: dict[str, Any] = field(default_factory=dict)
    few_shot_scorer: str = DEFAULT_FEW_SHOT_SCORER  # how queries meet the references (registry.FEW_SHOT_SCORERS)
    fusion: str = "raw"  # zero-shot + few-shot fusion: "raw" (0.1) or "normalized" (reference statistics)
    # ALFA: where eq. (4)'s prompt selection applies (global, all, soft, off; scoring/contextual.py);
    # None: the method's default (a built detector records the one it uses)
    contextual: str | None = None
    preset: str | None = None  # a named configuration (alfa_ad/presets.py); it sets the fields it names
    # prompt sources by name (alfa_ad.registry.PROMPT_SOURCES); None: the method's defaults, with
    # ``llm_prompts`` / ``prompts`` and ``learned`` (a built detector records the names it uses)
    prompt_sources: tuple[str, ...] | None = None
    # anomaly region refinement (CLIP-ADA; alfa_ad/scoring/refine.py): off, or on with these
    # vision blocks, deepest first (None: the default blocks; a built detector records them)
    refine: bool = False
    refine_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            for name, value in _choice("preset", self.preset, PRESETS, preset_fields).items():
                setattr(self, name, {**self.options, **value} if name == "options" else value)
        if self.contextual is not None:
            self.contextual = _choice("contextual", self.contextual, PLACEMENTS, parse_placement)
        for name, registry in (("method", METHODS), ("aligner", ALIGNERS), ("few_shot_scorer", FEW_SHOT_SCORERS)):
            _choice(name, getattr(self, name), registry.names(), registry.check)
        if self.fusion not in ("normalized", "raw"):
            raise ConfigFieldError("fusion", f"must be normalized or raw, got {self.fusion!r}")
        for name in ("scales", "window_strides"):
            value = getattr(self, name)
            if value is not None:
                try:  # integers (numpy's too), one or several; not text, booleans or fractions
                    value = value if hasattr(value, "__iter__") else (value,)
                    if isinstance(value, (str, bytes)) or any(isinstance(v, bool) for v in value):
                        raise TypeError
                    value = tuple(operator.index(v) for v in value)
                except TypeError:
                    raise ConfigFieldError(name, f"must be integers, e.g. 2,3; got {getattr(self, name)!r}") from None
                setattr(self, name, value)
        self._check_strides()
        if self.prompt_sources is not None:
            if isinstance(self.prompt_sources, str):
                self.prompt_sources = tuple(n.strip() for n in self.prompt_sources.split(",") if n.strip())
            self.prompt_sources = tuple(_choice("prompt_sources", str(n), PROMPT_SOURCES.names(), PROMPT_SOURCES.check)
                                        for n in self.prompt_sources)
            if not self.prompt_sources:
                raise ConfigFieldError("prompt_sources", "names no source; leave it out for the method's defaults")
        if self.refine_layers is not None:
            try:
                self.refine_layers = parse_layers(self.refine_layers)
            except ValueError as exc:
                raise ConfigFieldError("refine_layers", str(exc).removeprefix("refine layers "), str(exc)) from None
        self.tile = str(self.tile)
        self.batch_size = parse_batch_size(self.batch_size)
        self.options = dict(self.options)

    def _check_strides(self) -> None:
        """Window strides against the scales they go with (ALFA's defaults when none are given;
        another method's defaults are its own check); before any model loads."""
        scales = self.scales if self.scales is not None else ALFA_SCALES if self.method == "alfa" else None
        if not self.window_strides or scales is None:
            return
        try:
            parse_strides(self.window_strides, scales)
        except ValueError as exc:
            raise ConfigFieldError("window_strides", str(exc).removeprefix("window strides "), str(exc)) from None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        out = asdict(self)
        out["scales"] = None if self.scales is None else list(self.scales)
        out["window_strides"] = None if self.window_strides is None else list(self.window_strides)
        out["refine_layers"] = None if self.refine_layers is None else list(self.refine_layers)
        out["prompt_sources"] = None if self.prompt_sources is None else list(self.prompt_sources)
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
