"""The vision-only timm backbone (``--model timm:<arch>[@<side>]``, DINOv2 for patchknn and
musc): peer equivalence with timm's own forward, register tokens dropped (and what goes
wrong when they are not), checkpoints in DINOv2's layout read with ``weights_only``, one-line
errors without weights, and the detector / record / CLI paths.  Random weights only: no
DINOv2 checkpoint is reachable here."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.aligners import encode
from alfa_ad.cli import app
from alfa_ad.model import WeightsUnavailableError, load_backbone
from alfa_ad.model.timm_vit import DEFAULT_SIDE, parse_timm_name

PLAIN = "timm:vit_small_patch14_dinov2@56"  # a 4 x 4 patch grid: small and quick
REGISTERS = "timm:vit_small_patch14_reg4_dinov2@56"


@pytest.fixture(scope="module")
def plain():
    return load_backbone(PLAIN, weights="random", seed=0, device="cpu")  # the record's seed


@pytest.fixture(scope="module")
def registers():
    return load_backbone(REGISTERS, weights="random", seed=1, device="cpu")


def _pixels(seed: int = 0, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def test_names_parse_with_the_default_side_and_one_line_errors():
    assert parse_timm_name("timm:vit_small_patch14_dinov2") == ("vit_small_patch14_dinov2", DEFAULT_SIDE)
    assert parse_timm_name("timm:vit_base_patch14_dinov2@224") == ("vit_base_patch14_dinov2", 224)
    for bad, words in [("timm:", "give a timm architecture"), ("timm:vit_small_patch14_dinov2@big", "integer")]:
        with pytest.raises(ValueError, match=words):
            parse_timm_name(bad)
    with pytest.raises(ValueError, match="unknown timm model 'no_such_vit'"):
        load_backbone("timm:no_such_vit", weights="random", device="cpu")
    with pytest.raises(ValueError, match="not a multiple of its patch size 14"):
        load_backbone("timm:vit_small_patch14_dinov2@60", weights="random", device="cpu")


@pytest.mark.parametrize("which", ["plain", "registers"])
def test_tokens_equal_timms_own_forward(which, request):
    """The final-norm patch tokens and class embedding are timm's ``forward_features``; a
    captured block is timm's ``forward_intermediates`` of that block."""
    bb = request.getfixturevalue(which)
    x = _pixels()
    feats = encode(bb, x, (1,))
    with torch.no_grad():
        ref = bb.vit.forward_features(x)
        inter = bb.vit.forward_intermediates(x, indices=[1], norm=False, output_fmt="NLC", intermediates_only=True)[0]
    prefix = bb.prefix
    assert prefix == (5 if which == "registers" else 1)
    assert feats.last.shape[1] == 1 + 16 and feats.caps[0].shape[1] == 1 + 16  # [class, patches]
    torch.testing.assert_close(bb.patch_tokens(feats.last), ref[:, prefix:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.g, ref[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.caps[0][:, 1:], inter, atol=1e-5, rtol=1e-5)


def test_keeping_the_register_tokens_would_misplace_the_patches(registers, monkeypatch):
    """The broken variant: the backbone returns the raw sequence (registers kept), so what
    the methods read as patches starts with the four registers and is not timm's patches."""
    from alfa_ad.model.timm_vit import TimmVitBackbone

    x = _pixels()
    with torch.no_grad():
        ref = registers.vit.forward_features(x)[:, registers.prefix:]
    right = registers.patch_tokens(encode(registers, x).last)
    monkeypatch.setattr(TimmVitBackbone, "_public", lambda self, t: t)
    wrong = registers.patch_tokens(encode(registers, x).last)
    assert right.shape == ref.shape and (right - ref).abs().max() <= 1e-5
    assert wrong.shape[1] == ref.shape[1] + 4 and (wrong[:, : ref.shape[1]] - ref).abs().max() > 1e-2


def test_a_dinov2_layout_checkpoint_loads_resampled_and_is_recorded(tmp_path, plain):
    """DINOv2's own file layout (``mask_token``, positional embedding at 518 px) through timm's
    converter into the 56 px model; the weights are the file's."""
    big = load_backbone("timm:vit_small_patch14_dinov2@518", weights="random", seed=7, device="cpu")
    state = {k: v.clone() for k, v in big.vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    bb = load_backbone(PLAIN, checkpoint=path, device="cpu")
    assert bb.weights.source == "checkpoint" and bb.weights.sha256 and bb.vit.pos_embed.shape[1] == 1 + 16
    torch.testing.assert_close(bb.vit.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    assert not torch.equal(bb.vit.blocks[3].attn.qkv.weight, plain.vit.blocks[3].attn.qkv.weight)


def test_a_dinov2_checkpoint_with_registers_converts(tmp_path, registers):
    """DINOv2's register layout (``register_tokens``, a class position inside ``pos_embed``,
    ``mask_token``) into timm's reg4 model: registers, class token and blocks are the file's."""
    big = load_backbone("timm:vit_small_patch14_reg4_dinov2@518", weights="random", seed=7, device="cpu")
    timm_state = big.vit.state_dict()
    width = timm_state["cls_token"].shape[-1]
    state = {k: v.clone() for k, v in timm_state.items() if k != "reg_token"}
    state["register_tokens"] = timm_state["reg_token"].clone()
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, width), timm_state["pos_embed"]], dim=1)
    state["mask_token"] = torch.zeros(1, width)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    bb = load_backbone(REGISTERS, checkpoint=path, device="cpu")
    torch.testing.assert_close(bb.vit.reg_token, timm_state["reg_token"])
    torch.testing.assert_close(bb.vit.cls_token, timm_state["cls_token"])
    torch.testing.assert_close(bb.vit.blocks[2].mlp.fc1.weight, timm_state["blocks.2.mlp.fc1.weight"])
    assert not torch.equal(bb.vit.reg_token, registers.vit.reg_token) and bb.vit.pos_embed.shape[1] == 16


def test_weights_are_a_local_file_or_random_else_one_line_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="pass --checkpoint FILE") as err:
        load_backbone(PLAIN, device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="checkpoint file not found"):
        load_backbone(PLAIN, checkpoint=tmp_path / "none.pth", device="cpu")
    with pytest.raises(ValueError, match="--weights planted is a CLIP"):
        load_backbone(PLAIN, weights="planted", device="cpu")
    evil = tmp_path / "evil.pth"  # not loadable with weights_only=True: refused, never unpickled
    evil.write_bytes(pickle.dumps({"x": Image.new("RGB", (2, 2))}))
    with pytest.raises(WeightsUnavailableError, match="evil.pth: cannot load as timm:vit_small_patch14_dinov2@56"):
        load_backbone(PLAIN, checkpoint=evil, device="cpu")


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)) for _ in range(n)]


def test_patch_methods_run_on_it_and_prompt_methods_are_refused(plain, registers):
    det = Detector(plain, method="patchknn", cache_dir=None)
    det.fit_normals(_images(2, 0))
    image = _images(1, 5)[0]
    r = det(image, "widget")
    assert r.anomaly_map.shape == (70, 90) and np.isfinite(r.score) and "random weights" in r.weights
    assert det.text_cache.encoded == 0  # no prompt goes through a text encoder
    record = json.loads(json.dumps(det.config.as_dict()))
    assert record["model"] == PLAIN and record["weights"] == "random"
    again = Detector.from_config(record, cache_dir=None, device="cpu")
    again.fit_normals(_images(2, 0))
    assert again(image, "widget").score == pytest.approx(r.score, abs=1e-6)
    musc = Detector(registers, method="musc", cache_dir=None).predict(_images(3, 1), class_name="widget")
    assert len(musc) == 3 and all(np.isfinite(x.score) for x in musc)
    with pytest.raises(ValueError, match="method alfa reads prompts and .* has no text tower") as err:
        Detector(plain, method="alfa", cache_dir=None)
    assert "\n" not in str(err.value)


def test_the_cli_runs_patchknn_on_a_timm_model_and_says_how_to_give_weights(tmp_path):
    from alfa_ad.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=1, seed=3)
    normals = tmp_path / "normals"
    normals.mkdir()
    for i, im in enumerate(_images(2, 9)):
        im.save(normals / f"{i}.png")
    runner = CliRunner()
    base = ["run", "--data", str(data), "--model", PLAIN, "--method", "patchknn", "--normals", str(normals),
            "--shots", "1", "--no-overlays"]
    out = tmp_path / "out"
    ok = runner.invoke(app, base + ["--weights", "random", "--out", str(out)], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["detector"]["model"] == PLAIN
    missing = runner.invoke(app, base + ["--out", str(tmp_path / "none")], catch_exceptions=False)
    errors = [line for line in missing.output.splitlines() if line.startswith("error:")]
    assert missing.exit_code != 0 and len(errors) == 1 and "pass --checkpoint FILE" in errors[0], missing.output
