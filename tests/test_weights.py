"""Weights: offline failure in one line, `alfa-ad weights`, portable checkpoints, `doctor`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.model import WeightsUnavailableError, load_backbone
from alfa_ad.model import weights as W

SMALL_VIT = "ViT-S-32"
TAGGED_VIT, TAG = "ViT-B-32", "laion2b_s34b_b79k"  # a small ViT that open_clip has a hub tag for


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and open_clip URL cache, and a hub that refuses connections."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(W, "OPEN_CLIP_URL_CACHE", tmp_path / "clip")
    return tmp_path


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("offline_flag", [True, False])
def test_missing_default_weights_fail_in_one_line_with_the_fixes(no_hub, monkeypatch, offline_flag):
    if offline_flag:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as exc:
        load_backbone()  # the default ViT-B-16-plus-240 / laion400m_e31
    msg = str(exc.value)
    assert "\n" not in msg and "ViT-B-16-plus-240/laion400m_e31" in msg
    assert "alfa-ad weights download" in msg and "--checkpoint" in msg and "--weights random" in msg
    assert ("HF_HUB_OFFLINE" in msg) == offline_flag


def test_cli_offline_default_weights_one_line_on_stderr(no_hub, tmp_path, monkeypatch):
    from alfa_ad.demo import make_synthetic_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    result = CliRunner().invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert line.startswith("error:") and "weights download" in line


def test_detect_offline_raises_the_same_one_line_error(no_hub, monkeypatch):
    from alfa_ad import detect

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="weights download"):
        detect(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy(), cache_dir=None)


def test_shipped_pretrained_records_match_open_clip():
    """The copy of open_clip's records (read without importing open_clip) says what open_clip says."""
    data = json.loads(W.KNOWN_REFS_FILE.read_text(encoding="utf-8"))
    keys = [k for k in data if not k.startswith("_")]
    assert "ViT-B-16-plus-240/laion400m_e31" in keys
    for key in keys:
        model, tag = key.split("/", 1)
        assert W.known_ref(model, tag) == W.pretrained_ref(model, tag), key
    assert W.known_ref("ViT-B-16-plus-240", "no-such-tag") is None


def test_missing_default_weights_fail_before_open_clip_is_imported(no_hub):
    """The offline error for the default weights does not wait for ``import open_clip``."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom alfa_ad.model import load_backbone\ntry:\n    load_backbone()\n"
            "except Exception as exc:\n    print(type(exc).__name__, 'open_clip' in sys.modules)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(no_hub / "hf")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split() == ["WeightsUnavailableError", "False"], out.stdout + out.stderr
    # the API and the CLI say it before torch loads at all
    code = ("import sys, numpy as np\nimport alfa_ad\ntry:\n    alfa_ad.detect(np.zeros((8, 8, 3), np.uint8))\n"
            "except Exception as exc:\n    print(type(exc).__name__, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split() == ["WeightsUnavailableError", "False"], out.stdout + out.stderr
    code = ("import sys\nfrom alfa_ad.cli import app\ntry:\n    app(['run', '--data', sys.argv[1], '--out', sys.argv[2]])\n"
            "except SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n")
    (no_hub / "data").mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(no_hub / "data" / "a.png")
    out = subprocess.run([sys.executable, "-c", code, str(no_hub / "data"), str(no_hub / "out")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert "weights download" in out.stderr


def test_unknown_pretrained_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match="laion400m_e31"):
        W.pretrained_ref("ViT-B-16-plus-240", "no-such-tag")


def test_cached_weights_load_without_network(no_hub, monkeypatch):
    """A file in the hub cache layout is found with the network off and is what gets loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = W.pretrained_ref(TAGGED_VIT, TAG)
    src = load_backbone(TAGGED_VIT, weights="random", seed=3, device="cpu")
    snap = no_hub / "hf" / f"models--{ref.hf_repo.replace('/', '--')}" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (no_hub / "hf" / f"models--{ref.hf_repo.replace('/', '--')}" / "refs").mkdir()
    (no_hub / "hf" / f"models--{ref.hf_repo.replace('/', '--')}" / "refs" / "main").write_text("abc")
    torch.save(src.clip.state_dict(), snap / ref.hf_candidates[-1])
    assert W.locate(ref) == snap / ref.hf_candidates[-1]
    bb = load_backbone(TAGGED_VIT, TAG, device="cpu")
    assert bb.weights.source == "pretrained" and bb.weights.file == str(snap / ref.hf_candidates[-1])
    assert bb.weights.sha256 == W.sha256_file(snap / ref.hf_candidates[-1])
    torch.testing.assert_close(bb.encode_text(["a photo"]), src.encode_text(["a photo"]), rtol=0, atol=0)


def test_weights_download_writes_a_portable_safetensors_checkpoint(no_hub, tmp_path, monkeypatch):
    """`weights download` (its fetch replaced by a local file: no network here) writes
    safetensors + manifest; --checkpoint then loads it, the model read from the manifest."""
    src = load_backbone(TAGGED_VIT, weights="random", seed=5, device="cpu")
    raw = tmp_path / "raw.bin"
    torch.save(src.clip.state_dict(), raw)
    monkeypatch.setattr(W, "fetch", lambda ref, quiet=True: raw)
    out = tmp_path / "carry"
    result = CliRunner().invoke(app, ["weights", "download", "--model", TAGGED_VIT, "--pretrained", TAG,
                                      "--to", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{TAGGED_VIT}__{TAG}.safetensors", f"{TAGGED_VIT}__{TAG}.safetensors.json"]
    target = out / files[0]
    manifest = json.loads((out / files[1]).read_text())
    assert manifest["model"] == TAGGED_VIT and manifest["sha256"] == W.sha256_file(target)
    bb = load_backbone(None, checkpoint=target, device="cpu")  # model from the manifest
    assert bb.weights.model_name == TAGGED_VIT and bb.weights.sha256 == manifest["sha256"]
    assert bb.weights.file == str(target) and target.name in bb.weights.label
    torch.testing.assert_close(bb.encode_text(["a photo"]), src.encode_text(["a photo"]), rtol=0, atol=0)
    with pytest.raises(WeightsUnavailableError, match="manifest says model"):
        load_backbone(SMALL_VIT, checkpoint=target)
    listed = CliRunner().invoke(app, ["weights", "list", "--dir", str(out)])
    assert listed.exit_code == 0 and manifest["sha256"][:16] in listed.output


def test_doctor_reports_and_exits_nonzero_without_default_weights(no_hub):
    result = CliRunner().invoke(app, ["doctor", "--timeout", "1"])
    assert result.exit_code == 1
    for part in ("torch", "open_clip", "numpy", "pillow", "device", "threads", "huggingface hub", "not ready"):
        assert part in result.output


def test_doctor_is_ready_when_the_default_weights_are_cached(no_hub, monkeypatch):
    ref = W.pretrained_ref("ViT-B-16-plus-240", "laion400m_e31")
    fake = no_hub / "weights.bin"
    fake.write_bytes(b"x")
    monkeypatch.setattr(W, "locate", lambda r: fake if r == ref else None)
    result = CliRunner().invoke(app, ["doctor", "--timeout", "1"])
    assert result.exit_code == 0 and "cached" in result.output and "ready" in result.output
