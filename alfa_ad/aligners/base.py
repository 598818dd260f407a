"""What every aligner shares: the one forward pass of an image (:class:`Features`), the
aligner interface, window indexing, and the text projections.

An aligner turns an image's features into **local embeddings** in CLIP's joint space,
one per window of patches (image half), and says how the class embeddings are moved
into that local space before eq. (11) compares them (text half).  Both halves live in
one class; the aligners are siblings chosen by name through
:data:`alfa_ad.registry.ALIGNERS`.  Window geometry, eq. (11), harmonic aggregation and
eq. (12) are shared by all of them (:mod:`alfa_ad.methods.alfa_head`).

Every aligner computes in two steps so that work is shared across window scales (and,
in ``alfa-ad ablate``, across configurations):

* ``prepare(features)``: what the aligner needs from one image, once (e.g. the last
  block's keys and values, or the dense per-patch embeddings);
* ``forward(features, state, windows)``: ``(B, n, D)`` local embeddings of ``n`` windows.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Sequence

import torch
from torch import nn

from ..model.backbone import ClipBackbone
from ..scoring.zero_shot import rank_one_transfer

TEXT_PROJECTIONS = ("rank1", "none")


class Features(NamedTuple):
    """One image batch's forward pass, shared by every aligner and by the few-shot bank."""

    tokens: torch.Tensor  # (B, 1+P, W) class + patch tokens after the positional embedding, before ln_pre
    z: torch.Tensor  # (B, 1+P, W) input of the last block, z^{L-1}
    g: torch.Tensor  # (B, D) global image embedding f(x), float32
    last: torch.Tensor  # (B, 1+P, W) output of the last block
    caps: tuple[torch.Tensor, ...]  # outputs of the captured blocks (few-shot memory layers)


def encode(backbone: ClipBackbone, pixels: torch.Tensor, capture: Sequence[int] = ()) -> Features:
    """The image's one full forward pass: tokens, ``z^{L-1}``, ``f(x)`` and captured block outputs."""
    tokens = backbone.tokens(pixels)
    z, caps = backbone.penultimate_with(tokens, tuple(capture))
    g, last = backbone.global_embedding(z)
    return Features(tokens, z, g, last, tuple(caps))


def select_rows(features: Features, rows: Sequence[int]) -> Features:
    """The forward pass of some images of a batch (``rows``)."""
    if len(rows) == features.g.shape[0]:
        return features
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=features.g.device)
    return Features(features.tokens[idx], features.z[idx], features.g[idx], features.last[idx],
                    tuple(c[idx] for c in features.caps))


def project_text(projection: str, g: torch.Tensor, local: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class embeddings in each window's local space.

    ``rank1``: ``W_T = I + (l - g) g^T`` (docs/method.md section 4), ``(B, n, 2, D)``;
    ``none``: the global class embeddings unchanged, ``(B, 2, D)``.
    """
    if projection == "rank1":
        return rank_one_transfer(g, local, classes)
    if projection == "none":
        return classes
    raise ValueError(f"text_projection must be one of {', '.join(TEXT_PROJECTIONS)}, got {projection!r}")


class Aligner(nn.Module):
    """Base class: the backbone's vision tower is a submodule, so ``.to()``/``.half()`` see it.

    Subclasses set ``name`` and ``default_projection`` and implement :meth:`prepare` and
    :meth:`forward`.  ``text_projection=None`` takes the aligner's default.
    """

    name: ClassVar[str] = ""
    default_projection: ClassVar[str] = "none"
    help: ClassVar[str] = ""
    localizes: ClassVar[bool] = True  # False: every window gets the whole image's embedding

    def __init__(self, backbone: ClipBackbone, text_projection: str | None = None) -> None:
        super().__init__()
        projection = text_projection if text_projection is not None else self.default_projection
        if projection not in TEXT_PROJECTIONS:
            raise ValueError(f"text_projection must be one of {', '.join(TEXT_PROJECTIONS)}, got {projection!r}")
        self.text_projection = projection
        self.visual = backbone.clip.visual
        object.__setattr__(self, "backbone", backbone)  # not a submodule: visual already is

    # ------------------------------------------------------------ image half
    def prepare(self, features: Features) -> Any:
        """Per-image state shared by every window scale (default: nothing)."""
        return None

    def forward(self, features: Features, state: Any, windows: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def window_embeddings(self, features: Features, state: Any, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Local embeddings ``(B, n_s, D)`` for each scale's windows (default: :meth:`forward`
        once per scale; an aligner may pack the scales together)."""
        return [self(features, state, w) for w in windows]

    def window_index(self, windows: torch.Tensor) -> torch.Tensor:
        """Token indices ``(n, 1 + k)`` of each window: the class token (0), then the window's
        patches (patch ``p`` is token ``p + 1``)."""
        cls = torch.zeros(windows.shape[0], 1, dtype=torch.long, device=windows.device)
        return torch.cat([cls, windows.long() + 1], 1)

    # ------------------------------------------------------------- text half
    def project_text(self, g: torch.Tensor, local: torch.Tensor, classes: torch.Tensor,
                     projection: str | None = None) -> torch.Tensor:
        """Class embeddings ``classes (B, 2, D)`` moved into each window's local space
        (``projection`` overrides this aligner's ``text_projection``)."""
        return project_text(projection or self.text_projection, g, local, classes)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, text_projection={self.text_projection!r}"
