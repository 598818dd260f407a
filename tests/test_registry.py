"""Every registered part, by name from :mod:`alfa_ad.registry` (no hard-coded lists):
each entry imports, satisfies its interface and runs through the detector, so a part
added with one registry line is tested with the rest."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from alfa_ad import Detector
from alfa_ad.aligners import Aligner
from alfa_ad.config import DetectorConfig
from alfa_ad.engines import Engine
from alfa_ad.methods.base import Method
from alfa_ad.prompting import PromptSet, PromptSource
from alfa_ad.registry import ALIGNERS, BACKENDS, ENGINES, FEW_SHOT_SCORERS, METHODS, PROMPT_SOURCES, TRAITS, Registry, trait

from conftest import grey_texture, spot_image

LOCAL_ALIGNERS = [n for n in ALIGNERS.names() if ALIGNERS.get(n).localizes]
# methods with windows: an aligner and scales apply (patchknn and musc score patches)
WINDOW_METHODS = [n for n in METHODS.names() if not trait(METHODS.get(n), "patches_only")]
OPTIONAL = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ray": "ray"}  # entry -> the extra it needs


def _importable(name: str) -> bool:
    module = OPTIONAL.get(name)
    return module is None or importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("registry", [METHODS, PROMPT_SOURCES, ALIGNERS, FEW_SHOT_SCORERS, BACKENDS, ENGINES],
                         ids=lambda r: r.kind)
def test_every_entry_imports_and_has_a_help_text(registry: Registry):
    assert registry.names(), registry.kind
    for entry in registry.entries():
        assert entry.help, f"{registry.kind} {entry.name}: no help text for the CLI"
        if _importable(entry.name):
            assert callable(registry.get(entry.name)), entry.target


@pytest.mark.parametrize("method", METHODS.names())
def test_a_methods_registry_line_names_its_traits(method):
    """The CLI reads a method's traits from its registry line (no import, no torch); they must
    be the ones its class declares."""
    declared = {t for t in TRAITS if trait(METHODS.get(method), t)}
    assert {t for t in TRAITS if METHODS.declares(method, t)} == declared
    with pytest.raises(ValueError, match="unknown method trait"):
        trait(METHODS.get(method), "windows")


def test_an_unknown_name_is_a_one_line_error_listing_the_choices():
    with pytest.raises(ValueError, match=r"unknown aligner 'shifted'; choose from masked, value") as err:
        ALIGNERS.check("shifted")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown prompt source 'gpt'"):
        DetectorConfig(prompt_sources=("template", "gpt"))


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("scorer", FEW_SHOT_SCORERS.names())
def test_every_method_satisfies_the_interface_zero_and_few_shot(method, scorer, planted_backbone):
    det = Detector(planted_backbone, method=method, few_shot_scorer=scorer, cache_dir=None)
    assert isinstance(det.method, Method) and det.method.name == method
    assert det.config.prompt_sources == METHODS.get(method).default_prompt_sources(det.config)
    good = [grey_texture(200, 320, seed=s) for s in (1, 2)]
    image, mask = spot_image(seed=3)
    if trait(det.method, "needs_normals"):  # no zero-shot part: a one-line error instead
        with pytest.raises(ValueError, match=f"^{method} needs normal references") as err:
            det.predict([good[0], image], "widget")
        assert "\n" not in str(err.value)
        zero = None
    else:
        zero = det.predict([good[0], image], "widget")
    if trait(det.method, "zero_shot_only"):  # fitting references is a one-line error
        with pytest.raises(ValueError, match=f"^{method} .*takes no normal references") as err:
            det.fit_normals(good)
        assert "\n" not in str(err.value) and det.method.bank_size == 0
        assert zero[1].score > zero[0].score and all(r.anomaly_map.shape == mask.shape for r in zero)
        return
    det.fit_normals(good)
    assert det.method.bank_size > 0
    few = det.predict([good[0], image], "widget")
    for results in (zero, few) if zero is not None else (few,):
        assert all(0.0 <= r.score <= 1.0 and r.anomaly_map.shape == mask.shape for r in results)
        assert results[1].score > results[0].score  # the planted spot scores above a normal image
    assert zero is None or few[0].score != zero[0].score  # the references changed the score


@pytest.mark.parametrize("method", WINDOW_METHODS)
@pytest.mark.parametrize("aligner", ALIGNERS.names())
def test_every_aligner_runs_under_every_method(method, aligner, planted_backbone):
    det = Detector(planted_backbone, method=method, aligner=aligner, cache_dir=None)
    assert isinstance(det.method.aligner, Aligner) and det.method.aligner.name == aligner
    image, mask = spot_image(seed=4)
    amap = det(image, "widget").anomaly_map
    inside, outside = amap[mask].mean(), amap[~mask].mean()
    if ALIGNERS.get(aligner).localizes:
        assert inside > outside + 0.01, (method, aligner, inside, outside)
    else:  # the class token's score broadcast: no map to speak of
        assert float(np.ptp(amap)) < 1e-3


@pytest.mark.parametrize("name", PROMPT_SOURCES.names())
def test_every_prompt_source_gives_prompt_sets(name, planted_backbone, tmp_path):
    config = DetectorConfig(weights="planted", prompt_sources=(name,))
    if name == "learned":
        path = tmp_path / "learned.pt"
        torch.save({"normal": torch.randn(2, planted_backbone.embed_dim),
                    "abnormal": torch.randn(3, planted_backbone.embed_dim)}, path)
        config = DetectorConfig(weights="planted", prompt_sources=(name,), learned=str(path))
    sources = PROMPT_SOURCES.get(name)(config, planted_backbone)
    assert sources and all(isinstance(s, PromptSource) for s in sources)
    sets = [s.prompts("bottle") for s in sources]
    assert all(isinstance(ps, PromptSet) for ps in sets)
    assert sum(len(ps.normal) + len(ps.abnormal) for ps in sets) > 0  # the shipped libraries know bottle


def test_a_named_prompt_source_replaces_the_methods_default(planted_backbone):
    default = Detector(planted_backbone, cache_dir=None)
    named = Detector(planted_backbone, prompt_sources=("winclip",), cache_dir=None)
    assert default.config.prompt_sources == ("template",) and named.config.prompt_sources == ("winclip",)
    assert set(named.prompts("widget").normal_sources) == {"winclip"}
    rebuilt = Detector.from_config(named.config, backbone=planted_backbone, cache_dir=None)
    assert rebuilt.prompts("widget") == named.prompts("widget")
    llm = Detector(planted_backbone, llm_prompts=True, cache_dir=None)
    assert llm.config.prompt_sources == ("template", "llm")


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_is_a_class_the_detector_can_use(name):
    if not _importable(name):
        pytest.skip(f"backend {name}: optional extra not installed")
    backend = BACKENDS.get(name)
    assert backend.name == name and callable(backend.create)  # create(detector, exported, precision, cache_dir)
    for member in ("__call__", "describe"):
        assert callable(getattr(backend, member)), (name, member)


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_is_an_engine(name):
    if not _importable(name):
        pytest.skip(f"engine {name}: ray not installed")
    assert issubclass(ENGINES.get(name), Engine)
