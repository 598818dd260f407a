"""What a :class:`~alfa_ad.detector.Detector` derives per class before it scores: the
prompts (after ``--prompt-class``), the prompt embeddings the method scores with, the
descriptions ``--explain`` ranks with their embeddings -- and, with the few-shot memory
bank and the thresholds, the :class:`ClassState` that carries all of it elsewhere.

A mixin, so ``Detector`` keeps one API while the per-class text state lives here; its
state is set by :meth:`ClassStates._init_class_states` (``Detector.__init__`` calls it).
It relies on the detector's ``sources``, ``method``, ``backbone``, ``text_cache`` and
``thresholds``.

:meth:`ClassStates.export_class_state` captures a class's state as plain tensors on the
CPU, so that a detector rebuilt elsewhere from the same
:class:`~alfa_ad.config.DetectorConfig` (a Ray actor, an exported model's check) scores
exactly like this one after :meth:`ClassStates.import_class_state`, without encoding a
prompt, reading a prompt library or fitting a reference image again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from .prompting import PromptSet, PromptSource, combine
from .prompting.base import explains, maps_classes, source_descriptors
from .registry import trait
from .results import Thresholds

__all__ = ["ClassState", "ClassStates", "to_device"]

Candidates = list[tuple[str, str, str]]  # (text, side, source) of each description --explain ranks


@dataclass
class ClassState:
    """One class's scoring state (see the module docstring)."""

    prompts: PromptSet
    text: Any  # method.prepare_text(...) output
    descriptors: tuple[Candidates, torch.Tensor] | None  # explain: candidates and their embeddings
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


class ClassStates:
    """Per-class prompts, prompt embeddings and descriptors of a detector (module docstring)."""

    def _init_class_states(self) -> None:
        self.prompt_classes: dict[str, str] = {}  # class name -> prompt-library class (``--prompt-class``)
        self._prompts: dict[str, PromptSet] = {}
        self._text: dict[str, Any] = {}
        self._descriptors: dict[str, tuple[Candidates, torch.Tensor]] = {}

    def set_prompt_class(self, class_name: str, library_class: str) -> None:
        """Let prompt libraries answer for ``class_name`` with their ``library_class`` entry
        (a folder ``hazelnut_toy`` scored with the shipped ``hazelnut`` prompts, say)."""
        self.prompt_classes[class_name] = library_class
        for cache in (self._prompts, self._text, self._descriptors):
            cache.pop(class_name, None)

    def _source_class(self, source: PromptSource, class_name: str) -> str:
        return self.prompt_classes.get(class_name, class_name) if maps_classes(source) else class_name

    def prompts(self, class_name: str) -> PromptSet:
        """The class's prompts from every source (the first source wins a duplicate)."""
        if class_name not in self._prompts:
            self._prompts[class_name] = combine(s.prompts(self._source_class(s, class_name)) for s in self.sources)
        return self._prompts[class_name]

    def class_text(self, class_name: str) -> Any:
        """The prompt embeddings the method scores ``class_name`` with (``method.prepare_text``),
        encoded once and cached."""
        if class_name not in self._text:
            ps = self.prompts(class_name)
            if not ps.normal or not ps.abnormal:
                raise ValueError(f"class {class_name!r}: the prompt sources gave no normal or no abnormal prompt")
            if trait(self.method, "text_free"):  # only the prompt counts: no text encoder runs
                self._text[class_name] = (len(ps.normal), len(ps.abnormal))
            else:
                normal = self._embed(ps.normal, ps.embeddings)
                abnormal = self._embed(ps.abnormal, ps.embeddings)
                self._text[class_name] = self.method.prepare_text(normal, abnormal)
        return self._text[class_name]

    def _embed(self, prompts: Sequence[str], known: Mapping[str, Any]) -> torch.Tensor:
        """Raw embeddings ``(N, D)`` of ``prompts``: those a source supplies (``known``, learned
        prompts) as given, texts through the text encoder and its cache."""
        texts = [p for p in prompts if p not in known]
        encoded = dict(zip(texts, self.text_cache.encode(self.backbone, texts))) if texts else {}
        rows = [torch.as_tensor(known[p]).float().cpu() if p in known else encoded[p] for p in prompts]
        bad = [p for p, r in zip(prompts, rows) if r.shape != (self.backbone.embed_dim,)]
        if bad:
            raise ValueError(f"prompt {bad[0]!r}: embedding of shape {tuple(rows[prompts.index(bad[0])].shape)}, "
                             f"but the model embeds text in {self.backbone.embed_dim} dimensions")
        return torch.stack(rows) if rows else torch.zeros(0, self.backbone.embed_dim)

    def explanation_candidates(self, class_name: str) -> Candidates:
        """``(text, side, source)`` of every description ``explain`` ranks: the descriptors of
        paper section 5.4 (side abnormal) and the normal and abnormal prompts of every
        source that explains (LLM; learned prompts by name, ``learned:abnormal:3``);
        template prompts explain nothing."""
        out: Candidates = []
        seen: set[str] = set()
        for s in self.sources:
            name = self._source_class(s, class_name)
            items = [(d, "abnormal", f"{s.name}-descriptor") for d in source_descriptors(s, name)]
            if explains(s):
                ps = s.prompts(name)
                items += [(t, "normal", s.name) for t in ps.normal] + [(t, "abnormal", s.name) for t in ps.abnormal]
            for item in items:
                if item[0] not in seen:
                    seen.add(item[0])
                    out.append(item)
        return out

    def descriptors(self, class_name: str) -> list[str]:
        """The texts :meth:`explanation_candidates` offers for the class."""
        return [t for t, _, _ in self.explanation_candidates(class_name)]

    def class_descriptors(self, class_name: str) -> tuple[Candidates, torch.Tensor]:
        """The explanation candidates and their unit-normalised embeddings ``(N, D)``."""
        if class_name not in self._descriptors:
            items = self.explanation_candidates(class_name)
            texts = [t for t, _, _ in items]
            emb = self._embed(texts, self.prompts(class_name).embeddings)
            self._descriptors[class_name] = (items, F.normalize(emb.float(), dim=-1))
        return self._descriptors[class_name]

    # ------------------------------------------------------------ moving a class's state
    def export_class_state(self, class_name: str, explain: bool = False) -> ClassState:
        """The state this detector scores ``class_name`` with now (after any few-shot fit and
        calibration), its tensors on the CPU; ``explain``: with the descriptors."""
        descriptors = None
        if explain:
            items, emb = self.class_descriptors(class_name)
            descriptors = (list(items), emb.cpu())
        return ClassState(prompts=self.prompts(class_name), text=to_device(self.class_text(class_name), "cpu"),
                          descriptors=descriptors, bank=to_device(self.method.export_bank(), "cpu"),
                          thresholds=self.thresholds)

    def import_class_state(self, class_name: str, state: ClassState) -> ClassState:
        """Score ``class_name`` with the captured prompts and embeddings (no encoding);
        returns the state with its tensors on this detector's device, for
        :meth:`activate_class_state`."""
        device = self.backbone.device
        self._prompts[class_name] = state.prompts
        self._text[class_name] = to_device(state.text, device)
        descriptors = None
        if state.descriptors is not None:
            descriptors = (state.descriptors[0], state.descriptors[1].to(device))
            self._descriptors[class_name] = descriptors
        return ClassState(state.prompts, self._text[class_name], descriptors, to_device(state.bank, device),
                          state.thresholds)

    def activate_class_state(self, state: ClassState) -> None:
        """Score with the class's memory bank and thresholds (no copy)."""
        self.method.import_bank(state.bank)
        self.thresholds = state.thresholds

    def forget_class_text(self, class_name: str | None = None) -> None:
        """Drop the cached prompt embeddings of ``class_name`` (every class: None), so the
        next call encodes them again (or, in a remote scorer, fails loudly)."""
        if class_name is None:
            self._text.clear()
        else:
            self._text.pop(class_name, None)
