"""The method interface (:class:`Method`) and what every method shares: the few-shot
reference bank (:class:`ReferenceBank`), window geometry, the output container, map
resizing and the reference pass of few-shot fitting.

A new method is one module here with a class that satisfies :class:`Method` (usually
``class MyMethod(ReferenceBank)``) plus one line in :data:`alfa_ad.registry.METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Collection, Iterable, NamedTuple, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from ..registry import FEW_SHOT_SCORERS
from ..scoring.fewshot import fit_references
from ..scoring.fusion import FUSIONS, FusionStats
from ..scoring.window_spec import parse_strides
from ..scoring.windows import coverage_matrix, make_window_indices


@dataclass
class BatchScores:
    """Scores for a batch at model resolution."""

    scores: torch.Tensor  # (B,) image anomaly scores in [0, 1]
    global_scores: torch.Tensor  # (B,) class-token scores (eq. 10)
    maps: torch.Tensor  # (B, h, w) anomaly maps at the model's input resolution
    kept_normal: torch.Tensor | None  # (B, N+) bool: prompts kept per image; None = all
    kept_abnormal: torch.Tensor | None  # (B, N-) bool; None = all
    embeddings: torch.Tensor | None = None  # (B, D) global image embeddings


class WindowGeometry:
    """Sliding windows of each scale on the patch grid (every ``strides[i]`` patches,
    default 1), with coverage matrices."""

    def __init__(self, grid: tuple[int, int], scales: tuple[int, ...],
                 strides: Sequence[int] | None = None) -> None:
        if not scales:
            raise ValueError("at least one window scale is needed")
        self.grid = grid
        self.scales = tuple(scales)
        self.strides = parse_strides(strides, self.scales)
        self.windows = [make_window_indices(grid, s, t) for s, t in zip(self.scales, self.strides)]
        n = grid[0] * grid[1]
        self.covers = [coverage_matrix(w, n) for w in self.windows]


def upsample(patch_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear ``(B, gh, gw) -> (B, H, W)`` (align_corners=False)."""
    return F.interpolate(patch_maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)


class ZeroShotFeatures(NamedTuple):
    """The class-independent half of a zero-shot pass: what the prompts are compared with.

    ``g``: ``(B, D)`` global embeddings f(x); ``local``: per window scale the aligner's
    window embeddings ``(B, n_s, D)``.  Kept for the leave-one-out references at fit time
    (about 0.9 MB per image for ViT-B-16-plus-240 at scales 2 and 3), so calibration and
    normalized fusion score them for any class without running the model again.
    """

    g: torch.Tensor
    local: list[torch.Tensor]

    def select(self, rows) -> "ZeroShotFeatures":
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.g.device)
        return ZeroShotFeatures(self.g[rows], [w[rows] for w in self.local])

    def to(self, device) -> "ZeroShotFeatures":
        return ZeroShotFeatures(self.g.to(device), [w.to(device) for w in self.local])

    @property
    def count(self) -> int:
        """How many images (or tiles) these are the features of."""
        return self.g.shape[0]

    @staticmethod
    def cat(parts: Sequence["ZeroShotFeatures"]) -> "ZeroShotFeatures":
        return ZeroShotFeatures(torch.cat([p.g for p in parts]),
                                [torch.cat(ws) for ws in zip(*(p.local for p in parts))])


def extract_references(batches: Iterable[torch.Tensor], reference_pass: Callable, keep: Collection[int] = ()):
    """Per normal unit (image or tile) its few-shot token sets and image embedding, and the
    :class:`ZeroShotFeatures` of the units numbered in ``keep`` (in unit order; None when
    none is kept or the method has no text part).

    ``reference_pass(pixels, rows)`` runs one batch: token sets ``[(B, ...)]``, image
    embeddings ``(B, D)`` or None, and the zero-shot features of the batch rows ``rows``
    (from the same forward pass) or None.
    """
    units, kept, start = [], [], 0
    for pixels in batches:
        b = pixels.shape[0]
        rows = [i for i in range(b) if start + i in keep]
        tokens, image, zero_shot = reference_pass(pixels, rows)
        units += [([t[i] for t in tokens], None if image is None else image[i]) for i in range(b)]
        if rows and zero_shot is not None:
            kept.append(zero_shot.to("cpu"))
        start += b
    return units, (ZeroShotFeatures.cat(kept) if kept else None)


@runtime_checkable
class Method(Protocol):
    """What the detector, the engines, export and the backends use of a method.

    Built as ``cls(backbone, scales=..., aligner=..., few_shot_scorer=..., fusion=...,
    contextual=..., **options)`` (``scales`` and ``contextual`` when the config names
    them, as a run's record always does; ``window_strides`` too when the config names strides
    other than 1, and a method with windows says its strides in a ``window_strides``
    attribute, one per scale: without it the record says stride 1).  Every tensor handed
    back is on the CPU; ``text`` is whatever :meth:`prepare_text` returned, on the model's
    device.  Optional class attributes declare what the method can do (:data:`alfa_ad.registry.TRAITS`, read with
    :func:`alfa_ad.registry.trait`, named in its registry line too); a ``mutual``
    method also has ``score_together(batches, text, fusion)`` and ``group_size``.
    """

    name: ClassVar[str]  # the registry name, recorded in every result
    peak_of_visual: ClassVar[bool]  # few-shot image score: the visual map's peak (WinCLIP+) or the fused map's
    backbone: Any
    scales: tuple[int, ...]  # window sizes in patches
    contextual: str  # where eq. (4) applies (scoring/placement.py); "off" for methods without it
    fusion: str  # zero-shot + few-shot fusion ("raw" or "normalized")
    scorer: Any  # the few-shot scorer (registry.FEW_SHOT_SCORERS)

    @classmethod
    def default_prompt_sources(cls, config: Any) -> tuple[str, ...]:
        """Names in :data:`alfa_ad.registry.PROMPT_SOURCES` used when the config names none."""

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> Any:
        """The method's form of a class's raw prompt embeddings ``(N, D)``."""

    def __call__(self, pixels: torch.Tensor, text: Any, fusion: FusionStats | None = None) -> "BatchScores":
        """Score a batch ``(B, 3, H, W)`` at model resolution."""

    def extract_normals(self, batches: Iterable[torch.Tensor], keep: Collection[int] = ()) -> tuple[list, Any]:
        """Per reference unit its token sets and image embedding, and the zero-shot features of ``keep``."""

    def covers(self) -> list: ...

    def set_normals(self, features: Sequence[tuple], coreset: int | None = None, seed: int = 0,
                    owners: Sequence[int] | None = None) -> None: ...

    def fit_normals(self, batches: Iterable[torch.Tensor], coreset: int | None = None, seed: int = 0) -> None: ...

    def clear_normals(self) -> None: ...

    def export_bank(self) -> Any: ...

    def import_bank(self, state: Any) -> None: ...

    @property
    def bank_size(self) -> int: ...

    def zero_shot_scores(self, features: ZeroShotFeatures, text: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot map ``(B, P)`` and class-token score ``(B,)`` of kept zero-shot features."""

    def finish(self, patch_map: torch.Tensor, normalized: bool) -> torch.Tensor:
        """``(B, gh, gw)`` patch map -> maps at model resolution."""


class ReferenceBank:
    """The few-shot half every method shares: the scorer that meets the references, how
    its results are fused with the zero-shot ones, and the fitted references themselves.

    A method calls :meth:`_init_bank` in its constructor and provides
    ``extract_normals`` and ``covers`` (which of the scorer's token sets are window sets).
    """

    def _init_bank(self, backbone: Any, few_shot_scorer: str, memory_layers: Sequence[int] | None, fusion: str,
                   **scorer_options: Any) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.fusion = fusion
        self.scorer = FEW_SHOT_SCORERS.get(few_shot_scorer)(backbone, memory_layers, **scorer_options)
        self.refs = None  # fitted references (scoring/fewshot.py:References)

    def set_normals(self, features: Sequence[tuple], coreset: int | None = None, seed: int = 0,
                    owners: Sequence[int] | None = None) -> None:
        """Fitted references from :meth:`extract_normals` output (``owners``: the reference image
        of each unit, default one unit per image); ``coreset`` bounds each token set."""
        if not features:
            raise ValueError("no normal reference image to build the memory bank from")
        images = None if features[0][1] is None else [f[1] for f in features]
        self.refs = fit_references([f[0] for f in features], images, owners or range(len(features)), self.covers(),
                                   coreset, seed)

    def fit_normals(self, batches: Iterable[torch.Tensor], coreset: int | None = None, seed: int = 0) -> None:
        self.set_normals(self.extract_normals(batches)[0], coreset, seed)

    def clear_normals(self) -> None:
        self.refs = None

    def export_bank(self) -> Any:
        """The fitted state (opaque; for :meth:`import_bank`)."""
        return self.refs

    def import_bank(self, state: Any) -> None:
        self.refs = state

    @property
    def bank_size(self) -> int:
        return 0 if self.refs is None else self.refs.size


class PromptFree:
    """What methods that read no prompt share (patchknn, musc).  The detector gathers a
    class's prompts for every method (the unified templates) but, for these (``text_free``),
    encodes none: such a method takes only their counts, reports every prompt as not kept, and smooths its patch maps with
    ``self.blur`` (an eighth of a patch unless given, as ALFA)."""

    text_free: ClassVar[bool] = True  # no prompt embedding is read: a vision-only backbone serves

    @classmethod
    def default_prompt_sources(cls, config: Any) -> tuple[str, ...]:
        return ("template",)

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[int, int]:
        """How many normal and abnormal prompts there are (for the all-False kept masks)."""
        return int(normal.shape[0]), int(abnormal.shape[0])

    @staticmethod
    def refuse_windows(name: str, scales: Sequence[int], window_strides: Sequence[int]) -> None:
        """One-line ``ValueError`` when window scales or strides are given to a patch method."""
        if scales or window_strides:
            what = f"scales {tuple(scales)}" if scales else f"window strides {tuple(window_strides)}"
            raise ValueError(f"{name} scores patches, not windows: {what} do not apply")

    @staticmethod
    def default_sigma(backbone: Any) -> float:
        """An eighth of a patch, in model pixels."""
        return backbone.image_size[0] / backbone.grid[0] / 8

    @staticmethod
    def none_kept(batch: int, text: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """All-False kept masks ``(B, N+)``, ``(B, N-)``: no prompt was read."""
        return torch.zeros(batch, text[0], dtype=torch.bool), torch.zeros(batch, text[1], dtype=torch.bool)

    def finish(self, patch_map: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        """``(B, gh, gw)`` -> maps at model resolution: bilinear upsampling, Gaussian smoothing."""
        return self.blur(upsample(patch_map.to(self.backbone.device), self.backbone.image_size))
