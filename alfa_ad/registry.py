"""One registry of the interchangeable parts: methods, prompt sources, aligners,
few-shot scorers, backends and engines.

Entries are registered by import path (``"package.module:attribute"``) and imported
only when used, so optional extras (onnxruntime, ray, ...) cost nothing until asked
for, and this module imports nothing heavy.  The CLI validates and documents its
choices from here, and :meth:`alfa_ad.Detector.from_config` builds from here, so a
run's record rebuilds the detector that wrote it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute"
    help: str
    traits: tuple[str, ...] = ()  # what the part declares of itself, readable without importing it


class Registry:
    """Name -> lazily imported class or factory of one kind of part."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: str, help: str = "", traits: tuple[str, ...] = ()) -> None:
        """Register ``target`` as ``name``.  ``traits``: names of the part's non-default traits
        (a method's ``needs_normals``, ``mutual`` ...: :data:`TRAITS`), so the CLI can check
        options before torch is imported; tests/test_registry.py checks them against the class."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, help, tuple(traits))

    def declares(self, name: str, trait: str) -> bool:
        """Whether entry ``name`` was registered with ``trait`` among its traits (no import)."""
        return trait in self._entries[self.check(name)].traits

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plug-in's tests clean up after themselves)."""
        del self._entries[self.check(name)]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """``name`` if registered, else ``ValueError`` listing the choices (one line)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")
        return name

    def get(self, name: str) -> Any:
        """The registered object (imported on first use)."""
        entry = self._entries[self.check(name)]
        module, _, attr = entry.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def help(self) -> str:
        """``name: help; name: help`` for CLI option texts."""
        return "; ".join(f"{e.name}: {e.help}" if e.help else e.name for e in self._entries.values())


# What a method can do that an ALFA-like one (a zero-shot part, optional references,
# windows) cannot, declared as class attributes set to True (``needs_normals = True``) and
# named in its registry line (``METHODS.add(..., traits=("needs_normals",))``) so the CLI
# can check options before importing it; tests/test_registry.py checks the two agree.
TRAITS: tuple[str, ...] = (
    "needs_normals",  # no zero-shot part: scoring without references is an error (patchknn)
    "zero_shot_only",  # references cannot be fitted (musc)
    "mutual",  # a predict call's images score each other (musc: score_together, group_size)
    "patches_only",  # no aligner, no window scales (patchknn, musc)
    "text_free",  # reads no prompt embedding: runs on a vision-only backbone (timm:..., DINOv2)
    "bank_input",  # exported with the memory bank as a graph input: exported backends run it few-shot (patchknn)
)


def trait(method: Any, name: str) -> bool:
    """Whether the method (class or instance) declares trait ``name`` (one of :data:`TRAITS`)."""
    if name not in TRAITS:
        raise ValueError(f"unknown method trait {name!r}; choose from {', '.join(TRAITS)}")
    return bool(getattr(method, name, False))


METHODS = Registry("method")
METHODS.add("alfa", "alfa_ad.methods.alfa:AlfaMethod",
            "ALFA (run-time prompt adaptation, fine-grained aligner, eq. 12)")
METHODS.add("winclip", "alfa_ad.methods.winclip:WinClipMethod", "WinCLIP / WinCLIP+ baseline")
METHODS.add("musc", "alfa_ad.methods.musc:MuscMethod",
            "MuSc-style zero-shot: the images of a class score each other (no prompts, no normals; --engine local)",
            traits=("mutual", "zero_shot_only", "patches_only", "text_free"))
METHODS.add("patchknn", "alfa_ad.methods.patchknn:PatchKnnMethod",
            "AnomalyDINO-style few-shot nearest-neighbour patch distances (needs normals: --shots k)",
            traits=("needs_normals", "patches_only", "text_free", "bank_input"))

# Prompt sources: factories ``(config, backbone) -> [PromptSource]``.  A method names its
# default sources (``Method.prompt_sources``); ``DetectorConfig.prompt_sources`` names others.
PROMPT_SOURCES = Registry("prompt source")
PROMPT_SOURCES.add("template", "alfa_ad.prompting.templates:template_sources",
                   "ALFA's unified templates (paper section 4.2; ALFA's default)")
PROMPT_SOURCES.add("winclip", "alfa_ad.prompting.templates:winclip_sources",
                   "WinCLIP's compositional ensemble (WinCLIP's default)")
PROMPT_SOURCES.add("llm", "alfa_ad.prompting.library:library_sources",
                   "LLM-written prompt libraries: the prompts file, else the shipped ones (--llm, --prompts)")
PROMPT_SOURCES.add("learned", "alfa_ad.prompting.learned:learned_sources",
                   "learned or imported prompt embeddings (--learned FILE)")

ALIGNERS = Registry("aligner")
ALIGNERS.add("masked", "alfa_ad.aligners.masked:MaskedAligner",
             "f(x ⊙ m): each window's tokens through every block, the paper's definition (default)")
ALIGNERS.add("value", "alfa_ad.aligners.value:ValueAligner",
             "last block's class attention renormalised over the window (fast approximation)")
ALIGNERS.add("dense", "alfa_ad.aligners.dense:DenseAligner",
             "ClearCLIP dense patch embeddings: last block q-q attention, no residual, no MLP (fast)")
ALIGNERS.add("none", "alfa_ad.aligners.global_only:GlobalAligner",
             "class token only: the global score broadcast (ablation baseline)")
DEFAULT_ALIGNER = "masked"  # docs/method.md section 4 argues the choice

BACKENDS = Registry("backend")
BACKENDS.add("torch", "alfa_ad.backends.eager:TorchBackend", "the method's torch module (default; any device, few-shot)")
BACKENDS.add("onnxruntime", "alfa_ad.backends.ort:OnnxRuntimeBackend",
             "the exported ONNX graph in ONNX Runtime (alfa-ad[onnx]; zero-shot ALFA)")
BACKENDS.add("openvino", "alfa_ad.backends.ov:OpenVinoBackend",
             "the exported OpenVINO IR on its CPU plugin (alfa-ad[openvino]; zero-shot ALFA)")

FEW_SHOT_SCORERS = Registry("few-shot scorer")
FEW_SHOT_SCORERS.add("bank", "alfa_ad.scoring.fewshot:BankScorer",
                     "memory bank of 0.1: nearest normal patch (ALFA: raw tokens of blocks at 1/2, 3/4 depth; "
                     "WinCLIP+: patch and window embeddings)")
FEW_SHOT_SCORERS.add("residual", "alfa_ad.scoring.fewshot:ResidualScorer",
                     "InCTRL-style in-context residuals, training-free: multi-layer patch residuals after ln_post "
                     "+ image-level residual to the mean reference embedding")
DEFAULT_FEW_SHOT_SCORER = "bank"

ENGINES = Registry("engine")
ENGINES.add("local", "alfa_ad.engines.local:LocalEngine", "decode in threads, score in this process")
ENGINES.add("ray", "alfa_ad.engines.ray_data:RayEngine",
            'Ray Data: CPU decode tasks and a scoring actor pool, local or on a cluster (pip install "alfa-ad[ray]")')
