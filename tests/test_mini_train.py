"""tools/mini_clip/train.py: a tiny training run is deterministic given the seed, changes
the weights, and writes fp16 safetensors that load through ``--model alfa-mini-clip
--checkpoint``."""

from __future__ import annotations

import pytest
import torch

from alfa_ad.model import load_backbone

TINY = ["--steps", "3", "--batch", "8", "--variants", "2", "--pool", "6", "--warmup", "1", "--eval-every", "100",
        "--monitor", "12", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from safetensors.torch import load_file

    from tools.mini_clip import train

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    out = tmp_path_factory.mktemp("mini_train")
    try:
        with torch.random.fork_rng(devices=[]):  # train.main seeds torch's global generator
            for name, seed in (("a", 0), ("b", 0), ("c", 1)):
                train.main([*TINY, "--seed", str(seed), "--out", str(out / f"{name}.safetensors")])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return out, {n: load_file(str(out / f"{n}.safetensors")) for n in "abc"}


@pytest.mark.slow
def test_training_is_deterministic_given_the_seed(runs):
    _, w = runs
    assert set(w["a"]) == set(w["b"])
    assert all(torch.equal(w["a"][k], w["b"][k]) for k in w["a"])
    assert any(not torch.equal(w["a"][k], w["c"][k]) for k in w["a"])  # another seed, other weights
    assert {v.dtype for v in w["a"].values()} == {torch.float16}


@pytest.mark.slow
def test_trained_file_loads_as_the_mini_architecture(runs):
    from tools.mini_clip.train import build_model, load_config

    out, w = runs
    init = build_model(load_config()).state_dict()
    assert any(not torch.equal(init[k].half(), w["a"][k]) for k in w["a"] if k != "logit_scale")
    bb = load_backbone("alfa-mini-clip", checkpoint=out / "a.safetensors", device="cpu")
    assert bb.weights.source == "mini" and "not a real CLIP" in bb.weights.label
    assert bb.image_size == (64, 64) and tuple(bb.grid) == (8, 8)
