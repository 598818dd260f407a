"""Explanations beyond the detector's own: a vision-language model's second opinion (``vlm``)."""

from .vlm import explain_image, fuse_score, vlm_explain_run

__all__ = ["explain_image", "fuse_score", "vlm_explain_run"]
