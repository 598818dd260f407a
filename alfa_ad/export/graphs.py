"""What each exportable method's graph is (:data:`GRAPHS`, one :class:`Exportable` per
method): what it refuses, the torch module traced with its example inputs and dynamic
axes, its input and output names, and the options that identify it (:func:`identity`).

* ``alfa`` (zero-shot): the image encoder and :class:`~alfa_ad.methods.alfa_head.AlfaHead`;
  inputs ``pixels (B, 3, H, W)``, the class's unit prompt embeddings ``normal (N+, D)``
  and ``abnormal (N-, D)``; outputs :data:`~alfa_ad.export.manifest.OUTPUTS`.
* ``patchknn`` (few-shot, the bank scorer without masking): the image encoder, the chosen
  block's patch tokens through the final norm, each patch's distance to its nearest bank
  row and the top-percent image score; inputs ``pixels`` and the memory bank
  ``bank (M, d)`` (unit rows, any ``M``), so one file serves every class and reference set;
  outputs :data:`~alfa_ad.export.manifest.BANK_OUTPUTS`.

musc is not exportable: its images score each other (no per-image graph).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from .manifest import BANK_INPUTS, BANK_OUTPUTS, INPUTS, OUTPUTS


class ExportSpec(NamedTuple):
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]]


class AlfaGraph(nn.Module):
    """:class:`AlfaHead` with tensor outputs in a fixed order (:data:`OUTPUTS`)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, pixels: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor):
        o = self.head(pixels, normal, abnormal)
        return o.scores, o.global_scores, o.maps, o.keep_normal, o.keep_abnormal, o.embeddings


class PatchKnnGraph(nn.Module):
    """patchknn's per-image scoring with the memory bank as an input (:data:`BANK_OUTPUTS`).
    The same pieces as :meth:`PatchKnnMethod.__call__` with the bank scorer, except that the
    nearest-row search is one matrix product (no chunks: the bank's size is dynamic)."""

    def __init__(self, method: Any) -> None:
        super().__init__()
        object.__setattr__(self, "method", method)  # not a module; its parts are registered below
        self.visual = method.backbone.vision_tower  # submodules, so the tracer sees weights, not constants
        self.blur = method.blur

    def forward(self, pixels: torch.Tensor, bank: torch.Tensor):
        from ..methods.patchknn import top_percent_mean
        from ..scoring.fewshot import nn_distance

        feats, sets = self.method.token_sets(pixels)
        distance = nn_distance(sets[0], bank, chunk=None)  # (B, P)
        scores = top_percent_mean(distance, self.method.top_percent)
        maps = self.method.finish(distance.view(-1, *self.method.backbone.grid))
        return scores, maps, feats.g.float()


def _check_alfa(detector) -> None:
    if detector.method.export_bank() is not None:
        raise ValueError("the few-shot memory bank of alfa is not part of the exported model; export and run "
                         "zero-shot, or use --backend torch for few-shot")


def _check_patchknn(detector) -> None:
    method = detector.method
    if method.scorer.name != "bank" or method.masking != "off":
        raise ValueError("patchknn exports with the bank scorer and masking off (pca masking needs an SVD, "
                         f"which ONNX lacks); got few_shot_scorer {method.scorer.name}, masking {method.masking}")


def _alfa(detector) -> ExportSpec:
    d = detector.backbone.embed_dim
    gen = torch.Generator().manual_seed(0)
    h, w = detector.backbone.image_size
    # different prompt counts, so that no two dynamic axes look alike to the tracer
    example = (torch.randn(2, 3, h, w, generator=gen),
               nn.functional.normalize(torch.randn(5, d, generator=gen), dim=-1),
               nn.functional.normalize(torch.randn(7, d, generator=gen), dim=-1))
    axes = {"pixels": {0: "batch"}, "normal": {0: "n_normal"}, "abnormal": {0: "n_abnormal"},
            **{o: {0: "batch"} for o in OUTPUTS},
            "keep_normal": {0: "batch", 1: "n_normal"}, "keep_abnormal": {0: "batch", 1: "n_abnormal"}}
    return ExportSpec(AlfaGraph(detector.method.head).eval(), example, axes)


def _patchknn(detector) -> ExportSpec:
    method, bb = detector.method, detector.backbone
    if bb.device.type != "cpu" or bb.dtype != torch.float32:  # writing only: any detector runs an export
        raise ValueError("write a patchknn export from a CPU fp32 detector (alfa-ad export --method patchknn), "
                         "then run it with --exported DIR")
    gen = torch.Generator().manual_seed(0)
    h, w = detector.backbone.image_size
    with torch.no_grad():
        width = method.token_sets(torch.zeros(1, 3, h, w))[1][0].shape[-1]  # the feature width of the bank
    example = (torch.randn(2, 3, h, w, generator=gen),
               nn.functional.normalize(torch.randn(11, width, generator=gen), dim=-1))
    axes = {"pixels": {0: "batch"}, "bank": {0: "bank_rows"}, **{o: {0: "batch"} for o in BANK_OUTPUTS}}
    return ExportSpec(PatchKnnGraph(method).eval(), example, axes)


def _alfa_options(detector) -> dict[str, Any]:
    head = detector.method.head
    return {"aligner": detector.config.aligner, "scales": list(head.scales), "window_strides": list(head.strides),
            "options": {"temperature": head.temperature, "k": head.k, "sigma": head.blur.sigma,
                        "contextual": head.contextual, "use_text": head.use_text,
                        "global_in_map": head.global_in_map, "text_projection": head.aligner.text_projection}}


def _patchknn_options(detector) -> dict[str, Any]:
    m = detector.method
    return {"aligner": None, "scales": [], "window_strides": [],
            "options": {"layer": m.layer, "top_percent": m.top_percent, "sigma": m.blur.sigma,
                        "masking": m.masking, "few_shot_scorer": m.scorer.name}}


class Exportable(NamedTuple):
    """An exportable method: ``check`` (ValueError, one line, for options it cannot export),
    ``spec`` (the graph to trace), ``options`` (its part of :func:`identity`), and the
    graph's input and output names (the manifest records them; backends feed by them)."""

    check: Callable[[Any], None]
    spec: Callable[[Any], ExportSpec]
    options: Callable[[Any], dict[str, Any]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


GRAPHS: dict[str, Exportable] = {
    "alfa": Exportable(_check_alfa, _alfa, _alfa_options, INPUTS, OUTPUTS),
    "patchknn": Exportable(_check_patchknn, _patchknn, _patchknn_options, BANK_INPUTS, BANK_OUTPUTS),
}


def exportable(method: str) -> Exportable:
    """The entry of ``method``; ValueError (one line) for a method with no per-image graph."""
    if method not in GRAPHS:
        raise ValueError(f"--method {method} cannot be exported; exportable: {', '.join(GRAPHS)} (musc's images "
                         "score each other, so it has no per-image graph)")
    return GRAPHS[method]


def check_exportable(detector) -> None:
    """ValueError (one line) when ``detector``'s method or options cannot be exported."""
    exportable(detector.config.method).check(detector)


def export_spec(detector) -> ExportSpec:
    """The graph of ``detector``'s method, with example inputs for tracing."""
    check_exportable(detector)
    return GRAPHS[detector.config.method].spec(detector)


def identity(detector) -> dict[str, Any]:
    """What an exported graph computes, from a detector: equal dicts, same graph."""
    bb = detector.backbone
    return {
        "model": bb.weights.model_name,
        "weights": {"source": bb.weights.source, "detail": bb.weights.detail,
                    "visual": bb.visual_fingerprint, "text": bb.fingerprint},
        "method": detector.config.method,
        **exportable(detector.config.method).options(detector),
        "input_size": list(bb.image_size),
        "mean": list(bb.mean),
        "std": list(bb.std),
        "embed_dim": bb.embed_dim,
    }
