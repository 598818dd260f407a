"""tools/mini_clip/train.py --checkpoint-dir / --resume: a run stopped (``--stop-after``), asked
to stop (SIGTERM) or killed outright after a checkpoint, then resumed with the same command,
ends with exactly the weights and optimiser states of the run done in one go; a resume that
leaves out part of the state does not (so the comparison can fail)."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

V2_TINY = ["--steps", "6", "--batch", "8", "--variants", "2", "--pool", "6", "--textures", "0.5", "--warmup", "2",
           "--eval-every", "100", "--monitor", "6", "--workers", "0", "--threads", "1", "--seed", "3",
           "--checkpoint-minutes", "0"]


class Killed(Exception):
    """Stands for SIGKILL: the run ends where it is, nothing more is written."""


@pytest.fixture(scope="module")
def train():
    from tools.mini_clip import train as module

    return module


@pytest.fixture(autouse=True)
def _torch_state():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):  # train.main seeds torch's global generator
        yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _run(train, folder, *extra):
    train.main(["--config", str(train.CONFIG_V2), *V2_TINY, "--checkpoint-dir", str(folder),
                "--out", str(folder / "w.safetensors"), *extra])


def _ckpt(folder):
    from tools.mini_clip.resume import load

    return load(folder / "checkpoint.pt")  # torch.load(weights_only=True)


def _same(a, b) -> bool:
    """Tensors, numbers and containers equal exactly (torch.equal for tensors)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


TRAINED = ("step", "model", "token_rows", "token_embedding_rows", "adamw", "sparse_adam", "rng")


def _trained_state_equal(a, b) -> bool:
    return all(_same(a[k], b[k]) for k in TRAINED)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train):
    folder = tmp_path_factory.mktemp("straight")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        with torch.random.fork_rng(devices=[]):
            _run(train, folder)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return _ckpt(folder), folder


@pytest.mark.slow
def test_stop_after_then_resume_is_bit_for_bit(tmp_path, train, straight):
    from safetensors.torch import load_file

    ref, ref_folder = straight
    assert ref["step"] == 6 and ref["token_rows"].numel() > 10
    _run(train, tmp_path, "--stop-after", "3")
    first = _ckpt(tmp_path)
    assert first["step"] == 3 and not _trained_state_equal(first, ref)
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "step3.pt")
    _run(train, tmp_path, "--resume")
    resumed = _ckpt(tmp_path)
    assert _trained_state_equal(resumed, ref)
    assert [r["start_step"] for r in resumed["runs"]] == [0, 3]
    assert len(list(tmp_path.glob("pool-*.npy"))) == 1  # the resumed run loaded the pool the first one rendered
    a, b = load_file(str(ref_folder / "w.safetensors")), load_file(str(tmp_path / "w.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint stays small: the embedding's untouched rows are rebuilt, not stored
    assert (tmp_path / "checkpoint.pt").stat().st_size < 8e6


@pytest.mark.slow
def test_kill_after_a_checkpoint_then_resume_is_bit_for_bit(tmp_path, train, straight, monkeypatch):
    ref, _ = straight
    real = train.PoolBatches.__getitem__

    def dies_at_step_4(self, step):
        if step == 4:
            raise Killed
        return real(self, step)

    monkeypatch.setattr(train.PoolBatches, "__getitem__", dies_at_step_4)
    with pytest.raises(Killed):
        _run(train, tmp_path)
    assert _ckpt(tmp_path)["step"] == 4  # the last checkpoint before the kill
    assert not (tmp_path / "w.safetensors").exists()
    monkeypatch.setattr(train.PoolBatches, "__getitem__", real)
    _run(train, tmp_path, "--resume")
    assert _trained_state_equal(_ckpt(tmp_path), ref)


@pytest.mark.slow
def test_sigterm_saves_and_resume_is_bit_for_bit(tmp_path, train, straight, monkeypatch):
    ref, _ = straight
    real = train.PoolBatches.__getitem__

    def terminated_at_step_1(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only asks the loop to stop
        return real(self, step)

    monkeypatch.setattr(train.PoolBatches, "__getitem__", terminated_at_step_1)
    with pytest.raises(SystemExit, match="stopped at step 2 of 6: continue with the same command and --resume"):
        _run(train, tmp_path, "--checkpoint-minutes", "60")
    assert _ckpt(tmp_path)["step"] == 2
    monkeypatch.setattr(train.PoolBatches, "__getitem__", real)
    _run(train, tmp_path, "--resume")
    assert _trained_state_equal(_ckpt(tmp_path), ref)


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["restore_optimizers", "restore_model"])
def test_an_incomplete_resume_gives_other_weights(tmp_path, train, straight, monkeypatch, broken):
    """Leave the optimisers' moments at zero, or the weights at their initial values: the same
    comparison as above now fails, so it would catch a resume that forgets state."""
    from tools.mini_clip import resume

    ref, _ = straight
    _run(train, tmp_path, "--stop-after", "3")
    monkeypatch.setattr(resume, broken, lambda *a, **k: None)
    _run(train, tmp_path, "--resume")
    got = _ckpt(tmp_path)
    assert got["step"] == ref["step"] and not _trained_state_equal(got, ref)
    assert not _same(got["model"], ref["model"])


@pytest.mark.slow
def test_resume_errors_name_the_culprit(tmp_path, train, capsys):
    with pytest.raises(SystemExit, match=r"checkpoint.pt: no checkpoint to resume"):
        _run(train, tmp_path, "--resume")
    _run(train, tmp_path, "--stop-after", "1")
    with pytest.raises(SystemExit, match=r"checkpoint.pt exists: add --resume"):
        _run(train, tmp_path, "--stop-after", "1")
    with pytest.raises(SystemExit, match=r"made with other options: lr 0.001 \(now 0.002\)"):
        _run(train, tmp_path, "--resume", "--lr", "2e-3")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="not a readable training checkpoint"):
        _run(train, tmp_path, "--resume")


@pytest.mark.slow
def test_a_trained_v2_file_loads_with_a_15_by_15_grid(straight, monkeypatch):
    """The v2 architecture (alfa-mini-clip-v2.json) through the open_clip checkpoint path, and
    ``--weights mini-v2``'s one-line error while its weights are not shipped."""
    from alfa_ad.model import WeightsUnavailableError, load_backbone
    from alfa_ad.model import mini

    _, folder = straight
    bb = load_backbone(mini.MODEL_NAME_V2, checkpoint=folder / "w.safetensors", device="cpu")
    assert bb.image_size == (120, 120) and tuple(bb.grid) == (15, 15)
    assert bb.weights.model_name == "alfa-mini-clip-v2"
    monkeypatch.setattr(mini, "WEIGHTS_FILE_V2", folder / "not-there.safetensors")
    with pytest.raises(WeightsUnavailableError, match=r"not-there.safetensors: mini-CLIP v2 weights are not shipped yet"):
        mini.weights_file("mini-v2")
    monkeypatch.setattr(mini, "WEIGHTS_FILE_V2", folder / "w.safetensors")
    assert mini.checkpoint_for("mini-v2") == (folder / "w.safetensors", "alfa-mini-clip-v2")
    assert mini.checkpoint_for("mini") == (mini.WEIGHTS_FILE, "alfa-mini-clip")
