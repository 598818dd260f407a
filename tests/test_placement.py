"""Where eq. (4) applies (scoring/placement.py), the image score in the map, presets, and
the run record's provenance for every kind of weights."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.aligners import build_aligner
from alfa_ad.cli import app
from alfa_ad.config import DetectorConfig
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.methods.alfa_head import AlfaHead
from alfa_ad.scoring.contextual import contextual_scores, keep_masks
from alfa_ad.scoring.placement import PLACEMENTS, parse_placement
from alfa_ad.scoring.windows import harmonic_mean
from alfa_ad.scoring.zero_shot import anomaly_probability


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def head(planted_backbone):
    return AlfaHead(build_aligner("masked", planted_backbone), planted_backbone.grid, planted_backbone.image_size)


def _prompts(d: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    normal = F.normalize(torch.randn(6, d, generator=gen), dim=-1)
    abnormal = F.normalize(torch.randn(5, d, generator=gen), dim=-1)
    g = torch.randn(3, d, generator=gen)
    return g, normal, abnormal


def _mean(prompts, weights):
    return F.normalize((weights.float() @ prompts) / weights.float().sum(-1, keepdim=True), dim=-1)


def test_placements_hand_computed(head, planted_backbone):
    g, normal, abnormal = _prompts(planted_backbone.embed_dim)
    sn, sa = contextual_scores(F.normalize(g, dim=-1) @ normal.T, F.normalize(g, dim=-1) @ abnormal.T)
    kn, ka = keep_masks(sn, sa)
    assert not kn.all() or not ka.all(), "the example must filter something, or every placement looks alike"
    every = torch.stack([_mean(normal, torch.ones_like(sn)), _mean(abnormal, torch.ones_like(sa))], 1)
    kept = torch.stack([_mean(normal, kn), _mean(abnormal, ka)], 1)
    out = {p: head.adapt(g, normal, abnormal, contextual=p) for p in PLACEMENTS}
    # off: every prompt everywhere
    assert out["off"].keep_normal.all() and torch.allclose(out["off"].classes, every, atol=1e-6)
    assert torch.allclose(out["off"].local_classes, every, atol=1e-6)
    # all (the paper's reading): the kept prompts for the image score and for the windows
    assert torch.allclose(out["all"].classes, kept, atol=1e-6)
    assert torch.allclose(out["all"].local_classes, kept, atol=1e-6)
    # global: the kept prompts for the image score only; windows meet every prompt
    assert torch.allclose(out["global"].classes, kept, atol=1e-6)
    assert torch.allclose(out["global"].local_classes, every, atol=1e-6)
    assert torch.allclose(out["global"].global_scores, out["all"].global_scores)
    # soft: prompts weighted by S_c in the image score
    ws = torch.where(sn.sum(-1, keepdim=True) > 0, sn, torch.ones_like(sn))
    wa = torch.where(sa.sum(-1, keepdim=True) > 0, sa, torch.ones_like(sa))
    soft = torch.stack([_mean(normal, ws), _mean(abnormal, wa)], 1)
    assert torch.allclose(out["soft"].classes, soft, atol=1e-6)
    assert torch.allclose(out["soft"].local_classes, every, atol=1e-6)
    want = anomaly_probability(g.unsqueeze(1), soft)[:, 0]
    assert torch.allclose(out["soft"].global_scores, want, atol=1e-6)
    # a wrong "global" that filtered the windows too would be "all": they differ here
    assert not torch.allclose(out["global"].local_classes, out["all"].local_classes, atol=1e-4)


def test_placement_names_and_the_old_boolean():
    assert parse_placement(True) == "all" and parse_placement(False) == "off"
    with pytest.raises(ValueError, match="contextual must be one of"):
        parse_placement("everywhere")
    with pytest.raises(ValueError, match="contextual must be one of"):
        DetectorConfig(contextual="everywhere")


def test_global_in_map_is_one_more_harmonic_term(planted_backbone):
    bb = planted_backbone
    with_g = AlfaHead(build_aligner("masked", bb), bb.grid, bb.image_size, (2, 3), global_in_map=True)
    without = AlfaHead(build_aligner("masked", bb), bb.grid, bb.image_size, (2, 3), global_in_map=False)
    pixels = torch.rand(2, 3, *bb.image_size)
    feats = with_g.encode(pixels)
    _, normal, abnormal = _prompts(bb.embed_dim, 1)
    ad = with_g.adapt(feats.g, normal, abnormal)
    local = with_g.local_embeddings(feats)
    windows_only = without.language_map(feats.g, local, ad.local_classes, global_scores=ad.global_scores)
    fused = with_g.language_map(feats.g, local, ad.local_classes, global_scores=ad.global_scores)
    per_scale = [with_g.window_map(feats.g, loc, ad.local_classes, cover)
                 for loc, (_, cover) in zip(local, with_g.geometry())]
    assert torch.allclose(windows_only, harmonic_mean(torch.stack(per_scale)), atol=1e-6)
    g_map = ad.global_scores.view(-1, 1, 1).expand_as(per_scale[0])
    assert torch.allclose(fused, 3 / sum(1 / m for m in [*per_scale, g_map]), atol=1e-6)
    assert not torch.allclose(fused, windows_only, atol=1e-4)


def test_defaults_and_the_paper_preset(planted_backbone):
    det = Detector(planted_backbone, cache_dir=None)
    c = det.config
    assert (c.contextual, c.scales, c.llm_prompts, c.preset) == ("off", (2, 3, 4, 5), False, None)
    assert c.window_strides == (1, 2, 3, 3) and det.method.head.strides == (1, 2, 3, 3)
    assert det.method.head.global_in_map and [s.name for s in det.sources] == ["template"]
    assert Detector(planted_backbone, cache_dir=None, method="winclip").config.scales == (2, 3)
    paper = Detector(planted_backbone, cache_dir=None, preset="paper")
    assert (paper.config.contextual, paper.config.scales, paper.config.llm_prompts) == ("all", (2, 3), True)
    assert paper.method.text_projection == "rank1" and not paper.method.head.global_in_map
    assert paper.method.head.blur.sigma == 4.0 and "llm" in [s.name for s in paper.sources]
    again = Detector.from_config(json.loads(json.dumps(paper.config.as_dict())), backbone=planted_backbone,
                                 cache_dir=None)
    assert again.config == paper.config
    with pytest.raises(ValueError, match="unknown preset"):
        DetectorConfig(preset="papers")
    with pytest.raises(ValueError, match="WinCLIP has no run-time prompt adaptation"):
        Detector(planted_backbone, cache_dir=None, method="winclip", contextual="all")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("placement") / "data", n_good=2, n_defect=2)


def test_cli_contextual_and_preset_are_recorded(demo_data, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", "--data", demo_data, "--weights", "planted", "--out", out, "--no-overlays",
                 "--preset", "paper", "--contextual", "global")
    assert res.exit_code == 0, res.output
    detector = json.loads((out / "metrics.json").read_text())["config"]["detector"]
    # the preset sets the fields it names (eq. 4 placement included)
    assert detector["preset"] == "paper" and detector["contextual"] == "all" and detector["scales"] == [2, 3]
    res = invoke("run", "--data", demo_data, "--weights", "planted", "--out", tmp_path / "r2", "--no-overlays",
                 "--contextual", "global")
    assert res.exit_code == 0, res.output
    detector = json.loads((tmp_path / "r2" / "metrics.json").read_text())["config"]["detector"]
    assert detector["contextual"] == "global" and detector["preset"] is None
    bad = invoke("run", "--data", demo_data, "--weights", "planted", "--out", tmp_path / "r3", "--contextual", "x")
    assert bad.exit_code != 0 and "--contextual must be one of" in bad.output
    bad = invoke("run", "--data", demo_data, "--weights", "planted", "--out", tmp_path / "r4", "--method",
                 "winclip", "--contextual", "all")
    assert bad.exit_code != 0 and "applies to --method alfa only" in bad.output


@pytest.mark.parametrize("weights", ["planted", "random", "mini", "checkpoint"])
def test_record_names_a_pretrained_tag_only_for_pretrained_weights(weights, demo_data, tmp_path):
    """A run with planted, random, mini or checkpoint weights records no pretrained tag
    (alfa-ad 0.1 wrote "laion400m_e31" under config.detector for all of them)."""
    args = ["--weights", weights]
    if weights == "random":
        args = ["--weights", "random", "--model", "alfa-mini-clip"]
    if weights == "checkpoint":
        from alfa_ad.model.mini import weights_file

        args = ["--model", "alfa-mini-clip", "--checkpoint", weights_file()]
    out = tmp_path / weights
    res = invoke("run", "--data", demo_data, "--out", out, "--no-overlays", *args)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "metrics.json").read_text())["config"]
    assert record["detector"]["pretrained"] is None and "pretrained" not in record
    assert "laion" not in json.dumps(record)


def test_record_keeps_the_tag_of_pretrained_weights(planted_backbone):
    from alfa_ad.outputs.record import RunOptions, build_record

    bb = planted_backbone
    saved = bb.weights
    try:
        bb.weights = replace(saved, source="pretrained", detail="laion400m_e31")
        det = Detector(bb, cache_dir=None)
        record = build_record(det, RunOptions(data="x", shots="0", seed=0), [], {})
    finally:
        bb.weights = saved
    assert record["pretrained"] == "laion400m_e31" and record["detector"]["pretrained"] == "laion400m_e31"
