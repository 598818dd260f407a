"""A new method and a new prompt source are one file (tests/plugin_parts.py) plus one
registry line each: the detector, its record, from_config and the CLI take them by name."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.methods.base import Method
from alfa_ad.registry import METHODS, PROMPT_SOURCES

from conftest import grey_texture, spot_image


@pytest.fixture
def plugin():
    METHODS.add("classtoken", "plugin_parts:ClassTokenMethod", "class token only (a plug-in)")
    PROMPT_SOURCES.add("shouted", "plugin_parts:shouted_sources", "one loud sentence per side (a plug-in)")
    try:
        yield
    finally:
        METHODS.remove("classtoken")
        PROMPT_SOURCES.remove("shouted")
    assert "classtoken" not in METHODS and "shouted" not in PROMPT_SOURCES


def test_a_registered_method_and_prompt_source_run_and_rebuild(plugin, planted_backbone):
    det = Detector(planted_backbone, method="classtoken", aligner="none", prompt_sources=("template", "shouted"),
                   cache_dir=None)
    assert isinstance(det.method, Method) and det.config.prompt_sources == ("template", "shouted")
    assert "A WIDGET WITH RED PAINT ON IT." in det.prompts("widget").abnormal
    image, _ = spot_image(seed=5)
    good = grey_texture(200, 320, seed=6)
    zero = det.predict([good, image], "widget")
    assert zero[1].score > zero[0].score and zero[1].method == "classtoken"
    det.fit_normals([grey_texture(200, 320, seed=s) for s in (7, 8)])
    few = det.predict([good, image], "widget")
    assert few[1].score > few[0].score and few[0].score != zero[0].score
    rebuilt = Detector.from_config(json.loads(json.dumps(det.config.as_dict())), backbone=planted_backbone,
                                   cache_dir=None)
    assert rebuilt.prompts("widget") == det.prompts("widget")
    assert abs(rebuilt(image, "widget").score - zero[1].score) < 1e-6


def test_the_cli_takes_a_registered_method_by_name(plugin, tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--data", str(data), "--out", str(out), "--weights", "planted",
                                      "--method", "classtoken", "--aligner", "none", "--no-overlays"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["detector"]["method"] == "classtoken"
