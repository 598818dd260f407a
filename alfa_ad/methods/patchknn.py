"""patchknn: AnomalyDINO-style few-shot nearest-neighbour patch distances (Damm et al.,
WACV 2025), on any open_clip vision tower the toolkit loads (docs/method.md, section
"patchknn (AnomalyDINO-style)").

The patch features of the normal references form a memory bank; each test patch scores
its cosine distance to the nearest bank patch, ``(1 - max_m cos(q, b_m)) / 2`` (the
toolkit's [0, 1] scale; the paper's ``1 - cos`` halved, the same order); the image score
is the mean of the top ``top_percent`` % patch scores (at least one patch).  Options:

* ``layer``: the block whose output patch tokens, after the vision tower's final layer
  norm ``ln_post``, are the features (default the last block: DINOv2's
  ``get_intermediate_layers`` with its final norm, as AnomalyDINO reads it);
* ``masking``: ``off`` (default) or ``pca``: test patches on the background side of the
  first principal component of the test image's own patch features score 0
  (:func:`pca_foreground`);
* ``rotations``: the references also enter the bank rotated by 90, 180 and 270 degrees;
* ``top_percent``: the share of patches the image score averages (1.0).

There is no zero-shot part: without references ``__call__`` raises a one-line error,
the detector's prompts are not used (every prompt is reported as not kept) and the
class-token score repeats the image score.  The memory bank, its coreset and the
leave-one-out maps of calibration are the shared ones (:func:`~alfa_ad.scoring.fewshot.fit_references`).
"""

from __future__ import annotations

from typing import ClassVar, Collection, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..aligners import encode
from ..model.backbone import ClipBackbone
from ..scoring.fewshot import fit_references, visual_map
from ..scoring.fusion import FusionStats
from ..scoring.smoothing import GaussianBlur
from .base import BatchScores, PromptFree, ReferenceBank, ZeroShotFeatures, extract_references

MASKINGS = ("off", "pca")
MASK_BORDER = 0.2  # the central crop that must be foreground: the grid without 20% on each side
MASK_CENTRE_SHARE = 0.35  # ... at least this share of it, else the other side of the component is kept
QUARTER_TURNS = (1, 2, 3)  # rotations of the references: 90, 180, 270 degrees


def needs_normals_message(name: str) -> str:
    return f"{name} needs normal references: fit_normals(images) first (CLI: --shots k, --shots all or --normals)"


def top_percent_mean(patch_scores: torch.Tensor, percent: float) -> torch.Tensor:
    """``(B, P) -> (B,)``: the mean of the ``floor(P * percent / 100)`` highest patch scores,
    the highest alone when that is 0 (AnomalyDINO's mean of the top 1%, an empirical tail
    value at risk)."""
    k = max(1, int(patch_scores.shape[-1] * percent / 100.0))
    return patch_scores.topk(k, dim=-1).values.mean(-1)


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation of ``(B, h, w)`` masks (outside the grid counts as background)."""
    return F.max_pool2d(mask.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0.5


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion (outside the grid erodes nothing)."""
    return ~_dilate(~mask)


def pca_foreground(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, P, d) -> (B, P)`` bool: the patches on the object's side of the first principal
    component of each image's own patch features.

    The patches whose centred projection on the component is positive are one side; when
    that side covers at most 35% of the central crop (the grid without 20% on each
    border), the other side is the object (objects are assumed centred, as in
    AnomalyDINO).  The mask is then dilated and closed with a 3x3 square.  The split is
    at 0, not at AnomalyDINO's threshold of 10, which is in units of DINOv2's features.
    """
    x = features.float() - features.float().mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    first = (x @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # (B, P)
    gh, gw = grid
    side = (first > 0).view(-1, gh, gw)
    top, left = int(gh * MASK_BORDER), int(gw * MASK_BORDER)
    centre = side[:, top : gh - top, left : gw - left].float().mean((1, 2))
    side = torch.where((centre <= MASK_CENTRE_SHARE).view(-1, 1, 1), ~side, side)
    closed = _erode(_dilate(_dilate(side)))  # dilation, then closing (dilation + erosion)
    return closed.flatten(1)


class PatchKnnMethod(PromptFree, ReferenceBank):
    name = "patchknn"
    peak_of_visual = False
    needs_normals: ClassVar[bool] = True  # no zero-shot part: the CLI and the tests ask for references
    patches_only: ClassVar[bool] = True  # no aligner, no window scales
    bank_input: ClassVar[bool] = True  # alfa-ad export: the bank is a graph input (export/graphs.py)

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: tuple[int, ...] = (),
        window_strides: tuple[int, ...] = (),
        layer: int | None = None,
        masking: str = "off",
        rotations: bool = False,
        top_percent: float = 1.0,
        sigma: float | None = None,
        aligner: str | None = None,
        few_shot_scorer: str = "bank",
        fusion: str = "raw",
        memory_layers: Sequence[int] | None = None,
        contextual: str | None = None,
    ) -> None:
        """``aligner`` is accepted and unused (no windows); ``fusion``: there is no text
        part to fuse with, so both fusions give the visual map as it is.  With the residual
        scorer the features are its token sets (``memory_layers``), without its
        image-level residual; ``layer`` then does not apply."""
        self.refuse_windows("patchknn", scales, window_strides)
        if contextual not in (None, "off"):
            raise ValueError(f"contextual {contextual!r}: patchknn has no prompts to adapt (eq. 4 is ALFA's)")
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {', '.join(MASKINGS)}, got {masking!r}")
        if not 0 < top_percent <= 100:
            raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
        h, w = backbone.image_size
        if rotations and h != w:
            raise ValueError(f"rotations need a square model input, the model takes {h}x{w}")
        depth = backbone.depth
        if few_shot_scorer == "bank":
            if memory_layers is not None:
                raise ValueError("patchknn reads one block with the bank scorer: give layer, not memory_layers")
            index = depth - 1 if layer is None else layer
            if not -depth <= index < depth:
                raise ValueError(f"layer {layer} out of range {-depth}..{depth - 1} for a {depth}-block vision tower")
            memory_layers = (index % depth,)
        elif layer is not None:
            raise ValueError(f"layer applies to the bank scorer; the {few_shot_scorer} scorer reads memory_layers")
        self.backbone = backbone
        self.scales = self.window_strides = ()
        self.contextual = "off"
        self.masking, self.rotations, self.top_percent = masking, bool(rotations), float(top_percent)
        self._init_bank(backbone, few_shot_scorer, memory_layers, fusion)
        self.blur = GaussianBlur(self.default_sigma(backbone) if sigma is None else sigma).to(backbone.device)

    @property
    def layer(self) -> int | None:
        """The block (0-based) whose ln_post patch tokens are the features (bank scorer)."""
        return self.scorer.layers[0] if self.scorer.name == "bank" else None

    # ------------------------------------------------------------- features
    def token_sets(self, pixels: torch.Tensor):
        """The forward pass and its patch-feature sets ``[(B, P, d)]``."""
        feats = encode(self.backbone, pixels, self.scorer.capture)
        if self.scorer.name != "bank":
            return feats, self.scorer.tokens(feats.caps, feats.last)
        layer = self.scorer.layers[0]
        out = feats.last if layer == self.backbone.depth - 1 else feats.caps[0]
        return feats, [self.backbone.patch_tokens(out)]

    def covers(self) -> list[None]:
        return [None] * len(self.scorer.layers)

    @property
    def views(self) -> int:
        """Views of each reference in the bank: upright, and its three quarter turns."""
        return 1 + len(QUARTER_TURNS) if self.rotations else 1

    # ------------------------------------------------------------- few-shot
    @torch.inference_mode()
    def extract_normals(self, batches: Iterable[torch.Tensor], keep: Collection[int] = ()):
        """Per normal unit its feature sets, each ``(views * P, d)`` (upright first, then
        the quarter turns); no image embedding, no zero-shot features (there is no text part)."""

        def reference_pass(pixels, rows):
            turned = [pixels] + [torch.rot90(pixels, k, dims=(2, 3)) for k in QUARTER_TURNS][: self.views - 1]
            per_view = [self.token_sets(view)[1] for view in turned]
            return [torch.cat(sets, dim=1) for sets in zip(*per_view)], None, None

        return extract_references(batches, reference_pass, keep)

    def set_normals(self, features: Sequence[tuple], coreset: int | None = None, seed: int = 0,
                    owners: Sequence[int] | None = None) -> None:
        """The bank from :meth:`extract_normals` output: each view of a unit is one more unit
        of the same reference (so leave-one-out leaves all of a reference's views out); the
        leave-one-out maps are kept for the upright views only, one per unit."""
        if not features:
            raise ValueError("no normal reference image to build the memory bank from")
        owners = list(owners) if owners is not None else list(range(len(features)))
        views = self.views
        units, unit_owners = [], []
        for (sets, _), owner in zip(features, owners, strict=True):
            n = sets[0].shape[0] // views
            units += [[s[v * n : (v + 1) * n] for s in sets] for v in range(views)]
            unit_owners += [owner] * views
        refs = fit_references(units, None, unit_owners, self.covers(), coreset, seed)
        if views > 1:
            refs.unit_owners = torch.tensor(owners)
            if refs.loo_visual is not None:
                refs.loo_visual = refs.loo_visual[::views]
        self.refs = refs

    @torch.inference_mode()
    def zero_shot_scores(self, features: ZeroShotFeatures, text) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("patchknn has no zero-shot part: it scores against normal references only")

    # ------------------------------------------------------------- scoring
    def patch_scores(self, sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, P)``: each patch's distance to its nearest bank patch (mean over feature
        sets), 0 off the foreground under ``masking="pca"``."""
        distances = visual_map(sets, self.refs, self.covers())
        if self.masking == "pca":
            distances = distances * pca_foreground(sets[-1], self.backbone.grid).to(distances.dtype)
        return distances

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: tuple[int, int], fusion: FusionStats | None = None) -> BatchScores:
        """``text``: :meth:`prepare_text`'s prompt counts; ``fusion`` is unused (no text part)."""
        if self.refs is None:
            raise ValueError(needs_normals_message(self.name))
        feats, sets = self.token_sets(pixels)
        patch = self.patch_scores(sets)
        scores = top_percent_mean(patch, self.top_percent)
        maps = self.finish(patch.view(-1, *self.backbone.grid))
        kept_normal, kept_abnormal = self.none_kept(pixels.shape[0], text)
        scores = scores.float().cpu()
        return BatchScores(scores, scores, maps.float().cpu(), kept_normal, kept_abnormal, feats.g.float().cpu())
