"""Aligners: how local (per-window) embeddings are obtained and how class embeddings are
moved into their space.  Chosen by name through :data:`alfa_ad.registry.ALIGNERS`."""

from .base import TEXT_PROJECTIONS, Aligner, Features, encode, project_text

__all__ = ["Aligner", "Features", "TEXT_PROJECTIONS", "encode", "project_text", "build_aligner"]


def build_aligner(name: str, backbone, **options) -> Aligner:
    """The registered aligner ``name`` on ``backbone`` (``options`` to its constructor)."""
    from ..registry import ALIGNERS

    return ALIGNERS.get(name)(backbone, **options)
