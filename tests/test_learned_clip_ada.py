"""The self-supervised (CLIP-ADA) objective of prompt learning: on the planted model it
recovers the cue the hand-written prompts miss, from normal images and synthetic defects
only, and the same learning with the defect masks misaligned (rolled off the defects)
does not: the masks are what it learns from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alfa_ad import Detector
from alfa_ad.learning import LearnConfig, learn_prompts
from alfa_ad.learning import train as train_module
from alfa_ad.prompting.learned import LearnedPromptSource

from conftest import grey_texture
from test_learned_training import MISALIGNED, _aurocs, planted_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learn(backbone, epochs=40):
    shots = [grey_texture(240, 240, seed=100 + j) for j in range(2)]
    return learn_prompts(backbone, {"widget": shots}, LearnConfig(epochs=epochs, objective="clip-ada"), seed=0, k=2,
                         handwritten={"widget": [p.format("widget") for p in MISALIGNED.abnormal]})


def test_clip_ada_objective_learns_from_the_masks(planted_backbone, monkeypatch):
    data = planted_images()
    learned = _learn(planted_backbone)
    info = learned.meta["classes"]["widget"]
    assert learned.meta["config"]["objective"] == "clip-ada" and info["objective"] == "clip-ada"
    assert info["final_loss"] < info["first_loss"] and info["adapter_change"] > 0
    good = _aurocs(Detector(planted_backbone, sources=[LearnedPromptSource(learned, planted_backbone)],
                            cache_dir=None), data)
    assert good[0] >= 0.9 and good[1] >= 0.9, good

    real = train_module.synthetic_defects

    def misaligned(images, count, rng):  # the wrong variant: each mask rolled half the image away
        bad, masks, sources = real(images, count, rng)
        return bad, [np.roll(m, (m.shape[0] // 2, m.shape[1] // 2), axis=(0, 1)) for m in masks], sources

    monkeypatch.setattr(train_module, "synthetic_defects", misaligned)
    wrong = _aurocs(Detector(planted_backbone, sources=[LearnedPromptSource(_learn(planted_backbone),
                                                                            planted_backbone)], cache_dir=None), data)
    assert wrong[1] < good[1] - 0.2, (good, wrong)


def test_unknown_objective_is_one_line():
    with pytest.raises(ValueError, match="objective must be one of promptad, clip-ada"):
        LearnConfig(objective="x")


def test_promptad_objective_unchanged_by_default(planted_backbone):
    assert LearnConfig().objective == "promptad"
    a = learn_prompts(planted_backbone, {"w": [grey_texture(240, 240, seed=1)]}, LearnConfig(epochs=2), seed=3, k=1)
    b = learn_prompts(planted_backbone, {"w": [grey_texture(240, 240, seed=1)]},
                      LearnConfig(epochs=2, objective="promptad"), seed=3, k=1)
    assert torch.equal(a.classes["w"].abnormal, b.classes["w"].abnormal)


def test_cli_objective(tmp_path):
    from typer.testing import CliRunner

    from alfa_ad.cli import app
    from alfa_ad.demo import make_synthetic_dataset
    from alfa_ad.prompting.learned import LearnedPrompts

    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    runner = CliRunner()
    base = ["learn-prompts", "--data", str(data), "--shots", "1", "--weights", "planted", "--epochs", "2",
            "--normals", str(data / "widget" / "test" / "good")]
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "x.safetensors"), "--objective", "nope"])
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1 and "objective" in bad.stderr
    ok = runner.invoke(app, [*base, "--out", str(tmp_path / "l.safetensors"), "--objective", "clip-ada"])
    assert ok.exit_code == 0, ok.output
    meta = LearnedPrompts.load(tmp_path / "l.safetensors").meta
    assert meta["config"]["objective"] == "clip-ada"
    run = runner.invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "out"), "--weights", "planted",
                              "--learned", str(tmp_path / "l.safetensors"), "--no-overlays"])
    assert run.exit_code == 0, run.output
