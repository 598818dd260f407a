"""musc: zero-shot scoring of unlabeled images by each other (MuSc, Li et al., ICLR 2024;
docs/method.md, section "musc").  No prompts, no normal references: the images of a class
that are scored together score each other.

Per group of images (units: images or tiles), for each block in ``layers`` (default
:func:`~alfa_ad.scoring.mutual.musc_layers`: a quarter, half, three quarters and all of
the depth) the block's patch tokens are layer-normalised over the whole map
(:func:`normalize_layer`); for each aggregation degree ``r`` in ``degrees`` (1, 3, 5)
each patch becomes the unit mean of its ``r x r`` neighbourhood (LNAMD); mutual scoring
(MSM) gives each patch the interval average of its distances to the other images'
nearest patches; the patch map is the mean over layers and degrees, halved into [0, 1]
(unit vectors are at most 2 apart).  The image score is the map's maximum, re-scored over
the group by class-token similarity (RsCIN, ``rescore_ks``; ``()`` turns it off).

A group is at most ``group`` images (default 64; MuSc's "divide_num" splits a test set
into subsets the same way): scores depend on which images share a group and are
reproducible for the same group.  The detector hands a method with ``mutual = True`` all
of a ``predict`` call's units at once (:meth:`score_together`); the engines call
``predict`` with ``Detector.images_per_call`` images, which is ``group`` for this method.

A fixed pool (:meth:`MuscMethod.set_pool`, ``Detector.fit_pool``; what ``alfa-ad serve``
uses): at most :attr:`~MuscMethod.pool_cap` (``group - 1``) unlabeled images of the class
(:func:`choose_pool` draws that many with a seed from more), whose layer tokens, image
embeddings and own maxima (the pool scored by itself) are computed once and kept.  Then
every image is scored alone by the pool (``mutual_scores(..., pool=...)``: not by the
images scored with it, never by itself) and re-scored among itself and the pool
(:func:`~alfa_ad.scoring.mutual.rescore_with_pool`), so its score depends on the pool only.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Iterable, NamedTuple, Sequence

import torch

from ..aligners import encode
from ..model.backbone import ClipBackbone
from ..scoring.fusion import FusionStats
from ..scoring.mutual import aggregate_neighbourhood, interval_bounds, musc_layers, mutual_scores, normalize_layer
from ..scoring.mutual import rescore_images, rescore_with_pool
from ..scoring.smoothing import GaussianBlur
from .base import BatchScores, PromptFree, ZeroShotFeatures

NO_REFERENCES = "musc is zero-shot from the images scored together: it takes no normal references (use --shots 0)"


def choose_pool(images: Sequence[Any], cap: int, seed: int = 0) -> list[Any]:
    """The pool drawn from a class's candidate images: all of them when there are at most
    ``cap``, else ``cap`` of them drawn with ``seed`` (in their original order)."""
    items = list(images)
    if len(items) <= cap:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), cap))
    return [items[i] for i in keep]


class MuscPool(NamedTuple):
    """A fixed pool on the model's device: per layer the layer-normalised patch tokens
    ``(R, P, C)`` (aggregated per degree at each call: storing every degree would hold three
    times the memory for a few percent of the time), the image embeddings ``(R, D)``, and
    each pool image's map maximum with the rest of the pool as its scorers ``(R,)`` (what
    re-scoring reads)."""

    layers: list[torch.Tensor]
    embeddings: torch.Tensor
    peaks: torch.Tensor
    source: str

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])


class MuscMethod(PromptFree):
    name = "musc"
    peak_of_visual = False
    mutual: ClassVar[bool] = True  # scores a predict call's images against each other (score_together)
    zero_shot_only: ClassVar[bool] = True  # fitting references is an error
    patches_only: ClassVar[bool] = True  # no aligner, no window scales

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: tuple[int, ...] = (),
        window_strides: tuple[int, ...] = (),
        layers: Sequence[int] | None = None,
        degrees: Sequence[int] = (1, 3, 5),
        interval: Sequence[float] = (0.0, 0.3),
        rescore_ks: Sequence[int] = (1, 2, 3),
        group: int = 64,
        sigma: float | None = None,
        aligner: str | None = None,
        few_shot_scorer: str | None = None,
        fusion: str = "raw",
        contextual: str | None = None,
    ) -> None:
        """``aligner``, ``few_shot_scorer`` and ``fusion`` are accepted and unused (no windows,
        no references, no text part)."""
        self.refuse_windows("musc", scales, window_strides)
        if contextual not in (None, "off"):
            raise ValueError(f"contextual {contextual!r}: musc has no prompts to adapt (eq. 4 is ALFA's)")
        depth = backbone.depth
        if layers is not None and not layers:
            raise ValueError("musc layers: name at least one block")
        bad = [i for i in (layers or ()) if not -depth <= int(i) < depth]
        if bad:
            raise ValueError(f"musc layers {list(layers)} out of range {-depth}..{depth - 1}")
        self.layers = tuple(musc_layers(depth) if layers is None else sorted({int(i) % depth for i in layers}))
        self.degrees = tuple(int(r) for r in degrees)
        if not self.degrees or any(r < 1 or r % 2 == 0 for r in self.degrees):
            raise ValueError(f"musc degrees must be odd numbers >= 1, got {list(degrees)}")
        self.interval = (float(interval[0]), float(interval[1]))
        interval_bounds(2, *self.interval)  # checks 0 <= low < high <= 1
        self.rescore_ks = tuple(int(k) for k in rescore_ks)
        if any(k < 1 for k in self.rescore_ks):
            raise ValueError(f"musc rescore_ks must be >= 1, got {list(rescore_ks)}")
        if int(group) < 2:
            raise ValueError(f"musc group must be at least 2 images, got {group}")
        self.group_size = int(group)
        self.pool: MuscPool | None = None  # set_pool: a fixed pool scores every image (the service)
        self.backbone = backbone
        self.scales = self.window_strides = ()
        self.contextual, self.fusion, self.scorer = "off", "raw", None
        self.blur = GaussianBlur(self.default_sigma(backbone) if sigma is None else sigma).to(backbone.device)

    @property
    def batch_dependence(self) -> str:
        """What every output of a run (the run record) or of the service says about its scores."""
        if self.pool is not None:
            return (f"musc scores each image alone against a fixed pool of {self.pool.size} images of its class "
                    f"({self.pool.source}), re-scored among itself and the pool: the same pool gives an image "
                    "the same score whatever is scored with it, another pool other scores")
        return (f"musc scores each image against the other images of its class scored with it, in groups of at "
                f"most {self.group_size} in run order (near-equal groups); the same group gives the same scores, "
                "another group (other images, or what a --resume left) other ones")

    # ------------------------------------------------------------- features
    def layer_tokens(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One forward pass: per layer the layer-normalised patch tokens ``(B, P, C)`` and the
        image embeddings, float32 on the model's device (a group's features are held there
        until the group is scored: the distances run where the model runs)."""
        last = self.backbone.depth - 1
        feats = encode(self.backbone, pixels, tuple(i for i in self.layers if i != last))
        caps = iter(feats.caps)
        tokens = [(feats.last if i == last else next(caps))[:, 1:] for i in self.layers]
        return [normalize_layer(t) for t in tokens], feats.g.float()

    def aggregated(self, layers: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """LNAMD of every layer at every degree: ``[layer][degree] (N, P, C)``."""
        return [[aggregate_neighbourhood(tokens, self.backbone.grid, r) for r in self.degrees] for tokens in layers]

    def patch_scores(self, layers: Sequence[torch.Tensor], pool: MuscPool | None = None) -> torch.Tensor:
        """``(N, P)`` in [0, 1]: MSM over the group, mean over layers and degrees, halved.
        ``pool``: each image is scored by the pool alone instead (not by the others)."""
        total = None
        scorers = None if pool is None else self.aggregated(pool.layers)
        for k, per_degree in enumerate(self.aggregated(layers)):
            for d, z in enumerate(per_degree):
                s = (mutual_scores(z, *self.interval) if scorers is None else
                     mutual_scores(z, *self.interval, pool=scorers[k][d], pool_only=True))
                total = s if total is None else total + s
        return (total / (2 * len(layers) * len(self.degrees))).clamp(0.0, 1.0)

    # ------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score_together(self, batches: Iterable[torch.Tensor], text: tuple[int, int],
                       fusion: FusionStats | None = None) -> list[BatchScores]:
        """Every image of ``batches`` (consumed one batch at a time: only features are kept)
        scored against the others; one :class:`BatchScores` (CPU) per batch."""
        sizes: list[int] = []
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.layers]
        embedded: list[torch.Tensor] = []
        for pixels in batches:
            tokens, g = self.layer_tokens(pixels)
            sizes.append(int(pixels.shape[0]))
            for kept, t in zip(per_layer, tokens):
                kept.append(t)
            embedded.append(g)
        if sum(sizes) < 2 and self.pool is None:
            raise ValueError(f"musc scores images against each other: it needs at least 2 images of a class "
                             f"scored together, got {sum(sizes)}")
        layers = [torch.cat(kept) for kept in per_layer]
        del per_layer
        embeddings = torch.cat(embedded)
        pool = self.pool
        patch = self.patch_scores(layers, pool)
        maps = self.finish(patch.view(-1, *self.backbone.grid)).float().cpu()
        peak = patch.amax(-1)
        if pool is None:
            scores = rescore_images(peak, embeddings, self.rescore_ks)  # () keeps the maxima
        else:
            scores = rescore_with_pool(peak, embeddings, pool.peaks, pool.embeddings, self.rescore_ks)
        scores = scores.cpu()
        peak, embeddings = peak.cpu(), embeddings.cpu()
        out, start = [], 0
        for b in sizes:
            rows = slice(start, start + b)
            out.append(BatchScores(scores[rows], peak[rows], maps[rows], *self.none_kept(b, text), embeddings[rows]))
            start += b
        return out

    def __call__(self, pixels: torch.Tensor, text: tuple[int, int], fusion: FusionStats | None = None) -> BatchScores:
        """The units of one batch scored against each other."""
        return self.score_together([pixels], text, fusion)[0]

    # ------------------------------------------------------------- a fixed pool
    @property
    def pool_cap(self) -> int:
        """Most images a pool holds: ``group - 1``, so an image is scored by as many others as
        an image of a full group in a run (63 by default); the pool's features are held like
        one group's (``pool_cap x P x C x layers`` floats on the model's device)."""
        return self.group_size - 1

    def draw_pool(self, images: Sequence[Any], seed: int = 0) -> list[Any]:
        """The pool :func:`choose_pool` draws from ``images``: at most :attr:`pool_cap`."""
        self._check_pool_cap()
        return choose_pool(images, self.pool_cap, seed)

    def _check_pool_cap(self) -> None:
        if self.pool_cap < 2:
            raise ValueError(f"a musc pool holds group - 1 images, at least 2: use group 3 or more, got {self.group_size}")

    @torch.inference_mode()
    def set_pool(self, batches: Iterable[torch.Tensor], source: str = "") -> MuscPool:
        """Fix the images of ``batches`` (2 to :attr:`pool_cap` whole images) as the pool that
        scores every later image: their features are computed once and kept, and their own
        maxima (each pool image scored by the rest of the pool) for re-scoring."""
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.layers]
        embedded = []
        for pixels in batches:
            tokens, g = self.layer_tokens(pixels)
            for kept, t in zip(per_layer, tokens):
                kept.append(t)
            embedded.append(g)
        n = sum(int(g.shape[0]) for g in embedded)
        self._check_pool_cap()
        if not 2 <= n <= self.pool_cap:
            raise ValueError(f"a musc pool holds 2 to {self.pool_cap} images (group - 1), got {n}")
        self.pool = None
        layers = [torch.cat(kept) for kept in per_layer]
        peaks = self.patch_scores(layers).amax(-1)  # the pool scored by itself, as a group
        self.pool = MuscPool(layers, torch.cat(embedded), peaks, source or f"{n} images")
        return self.pool

    def clear_pool(self) -> None:
        self.pool = None

    # ------------------------------------------------------------- no references
    def extract_normals(self, batches, keep=()):
        raise ValueError(NO_REFERENCES)

    def covers(self) -> list:
        return []

    def set_normals(self, features, coreset=None, seed=0, owners=None) -> None:
        raise ValueError(NO_REFERENCES)

    def fit_normals(self, batches, coreset=None, seed=0) -> None:
        raise ValueError(NO_REFERENCES)

    def clear_normals(self) -> None:
        pass

    def export_bank(self) -> None:
        return None

    def import_bank(self, state) -> None:
        if state is not None:
            raise ValueError(NO_REFERENCES)

    @property
    def bank_size(self) -> int:
        return 0

    def zero_shot_scores(self, features: ZeroShotFeatures, text) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("musc has no per-image zero-shot part: its scores come from the images scored together")
