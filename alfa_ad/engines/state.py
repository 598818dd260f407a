"""A class's scoring state, computed once on the driver and installed in remote detectors.

What a :class:`~alfa_ad.Detector` derives per class before scoring -- the prompts
(after ``--prompt-class``), the prompt embeddings the method scores with, the
descriptions ranked by ``--explain`` with their embeddings, the few-shot memory bank
(``method.export_bank()``) and the calibrated thresholds -- is captured here as plain
tensors on the CPU, so that a detector rebuilt elsewhere from the same
:class:`~alfa_ad.config.DetectorConfig` scores exactly like this one without encoding a
prompt, reading a prompt library or fitting a reference image again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..prompting import PromptSet
from ..results import Thresholds


@dataclass
class ClassState:
    prompts: PromptSet
    text: Any  # method.prepare_text(...) output
    descriptors: tuple[list[tuple[str, str, str]], torch.Tensor] | None  # explain: candidates and embeddings
    bank: Any  # method.export_bank()
    thresholds: Thresholds | None


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (lists, tuples, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def capture(detector, prompt_name: str, explain: int = 0) -> ClassState:
    """The state ``detector`` scores ``prompt_name`` with now (after ``prepare``)."""
    descriptors = None
    if explain:
        items, emb = detector._descriptor_state(prompt_name)
        descriptors = (list(items), emb.cpu())
    return ClassState(prompts=detector.prompts(prompt_name), text=to_device(detector._text_state(prompt_name), "cpu"),
                      descriptors=descriptors, bank=to_device(detector.method.export_bank(), "cpu"),
                      thresholds=detector.thresholds)


def install(detector, prompt_name: str, state: ClassState) -> ClassState:
    """Make ``detector`` use the captured prompts and embeddings for ``prompt_name``;
    returns the state with its tensors on the detector's device (for :func:`activate`)."""
    device = detector.backbone.device
    detector._prompts[prompt_name] = state.prompts
    detector._text[prompt_name] = to_device(state.text, device)
    descriptors = None
    if state.descriptors is not None:
        descriptors = (state.descriptors[0], state.descriptors[1].to(device))
        detector._descriptors[prompt_name] = descriptors
    return ClassState(state.prompts, detector._text[prompt_name], descriptors, to_device(state.bank, device),
                      state.thresholds)


def activate(detector, state: ClassState) -> None:
    """Make ``detector`` score with the class's memory bank and thresholds (no copy)."""
    detector.method.import_bank(state.bank)
    detector.thresholds = state.thresholds


class NoTextEncoding:
    """A text cache that refuses to encode: installed in remote detectors, whose prompt
    embeddings all come from the driver (a call here means state was not passed)."""

    def encode(self, backbone, texts) -> torch.Tensor:
        raise RuntimeError(f"a scoring worker was asked to encode {len(texts)} prompt(s); every class's "
                           "prompt embeddings must come from the driver (engines.state.capture)")
