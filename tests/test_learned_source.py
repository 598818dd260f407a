"""Learned and imported prompt embeddings as a prompt source (--learned FILE), the file
format and its checks, and ``alfa-ad learn-prompts`` end to end (planted weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.prompting.learned import LearnedPrompts, LearnedPromptsError, LearnedPromptSource
from alfa_ad.registry import trait
from alfa_ad.registry import METHODS

from conftest import grey_texture, spot_image

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def _cue_embeddings(backbone, n_normal=2, n_abnormal=3) -> dict[str, torch.Tensor]:
    """Planted-space raw embeddings: abnormal along the paint cue, normal along 'normal'."""
    normal = backbone.encode_text(["a photo of a flawless widget."] * n_normal).float()
    abnormal = backbone.encode_text(["a photo of a damaged widget."] * n_abnormal).float()
    return {"normal": normal, "abnormal": abnormal}


# ------------------------------------------------------------ imported embeddings
@pytest.mark.parametrize("layout", ["flat", "per-class", "nested", "promptad"])
def test_plain_torch_file_is_a_prompt_source(layout, tmp_path, planted_backbone):
    e = _cue_embeddings(planted_backbone)
    obj = {"flat": e, "per-class": {f"widget/{k}": v for k, v in e.items()}, "nested": {"widget": e},
           "promptad": {"text_features": torch.stack([e["normal"][0], e["abnormal"][0]])}}[layout]
    path = tmp_path / "emb.pt"
    torch.save(obj, path)
    det = Detector(planted_backbone, learned=str(path), llm_prompts=False, cache_dir=None)
    source = det.sources[-1]
    assert isinstance(source, LearnedPromptSource) and source.warnings  # a plain file cannot be checked
    ps = det.prompts("widget")
    assert "learned" in ps.normal_sources and "learned" in ps.abnormal_sources
    n_ab = 1 if layout == "promptad" else 3
    assert ps.abnormal_sources.count("learned") == n_ab
    img, _ = spot_image(200, 320, seed=0)
    assert det(img, "widget").score > det(grey_texture(200, 320, seed=1), "widget").score


def test_imported_embeddings_change_the_scores(tmp_path, planted_backbone):
    """Only imported embeddings (no text prompts): aligned ones find the paint, swapped
    ones invert the order, so the file is really what scores."""
    e = _cue_embeddings(planted_backbone)
    good, swapped = tmp_path / "good.pt", tmp_path / "swapped.pt"
    torch.save(e, good)
    torch.save({"normal": e["abnormal"], "abnormal": e["normal"]}, swapped)
    img, clean = spot_image(200, 320, seed=0)[0], grey_texture(200, 320, seed=1)
    src = LearnedPromptSource.load(good, planted_backbone)
    det = Detector(planted_backbone, sources=[src], cache_dir=None)
    bad = Detector(planted_backbone, sources=[LearnedPromptSource.load(swapped, planted_backbone)], cache_dir=None)
    assert det(img, "widget").score > det(clean, "widget").score
    assert bad(img, "widget").score < bad(clean, "widget").score


def test_kept_prompts_and_explanations_name_the_learned_source(tmp_path, planted_backbone):
    path = tmp_path / "emb.pt"
    torch.save(_cue_embeddings(planted_backbone), path)
    det = Detector(planted_backbone, learned=str(path), llm_prompts=False, cache_dir=None)
    r = det(spot_image(200, 320, seed=0)[0], "widget", explain=2)
    kept = dict(zip(r.kept_prompts["abnormal"], r.kept_sources["abnormal"]))
    assert kept and all((src == "learned") == p.startswith("learned:abnormal:") for p, src in kept.items())
    assert r.descriptors and all(d.source == "learned" and d.text.startswith("learned:") for d in r.descriptors)
    assert {d.side for d in r.descriptors} <= {"normal", "abnormal"}


def test_safetensors_plain_file(tmp_path, planted_backbone):
    from safetensors.torch import save_file

    path = tmp_path / "emb.safetensors"
    save_file({k: v.contiguous() for k, v in _cue_embeddings(planted_backbone).items()}, str(path))
    lp = LearnedPrompts.load(path)
    assert lp.plain and lp.dim == planted_backbone.embed_dim and lp.for_class("anything") is not None


@pytest.mark.parametrize("obj, message", [
    ({"normal": torch.zeros(2, 5), "abnormal": torch.zeros(2, 5)}, "dimension 5"),
    ({"normal": torch.zeros(2, 8)}, "no abnormal embeddings"),
    ({"weights": torch.zeros(3)}, "no prompt embeddings found"),
    ({"normal": torch.zeros(2, 8, dtype=torch.long), "abnormal": torch.zeros(2, 8)}, "float tensor"),
    ({"normal": torch.full((2, 8), float("nan")), "abnormal": torch.zeros(2, 8)}, "NaN"),
    ({"normal": torch.zeros(2, 8), "abnormal": torch.zeros(2, 9)}, "different dimensions"),
])
def test_bad_embedding_files_give_one_line(obj, message, tmp_path, planted_backbone):
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(LearnedPromptsError, match=message) as err:
        Detector(planted_backbone, learned=str(path), cache_dir=None)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_pickled_objects_are_refused(tmp_path, planted_backbone):
    """weights_only=True: a file holding arbitrary Python objects is not unpickled."""
    path = tmp_path / "evil.pt"
    torch.save({"normal": torch.zeros(1, 8), "abnormal": torch.zeros(1, 8), "x": Path("/")}, path)
    with pytest.raises(LearnedPromptsError, match="weights_only=True"):
        LearnedPrompts.load(path)
    (tmp_path / "junk.bin").write_bytes(b"not a tensor file at all")
    with pytest.raises(LearnedPromptsError, match="neither a safetensors nor a torch"):
        LearnedPrompts.load(tmp_path / "junk.bin")


# ------------------------------------------------------------ learn-prompts end to end
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """MVTec layout: widget/train/good (3 grey textures), widget/test/{good,spot} and masks."""
    root = tmp_path_factory.mktemp("toy")
    cls = root / "widget"
    for d in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cls / d).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(grey_texture(240, 240, seed=200 + i)).save(cls / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        Image.fromarray(grey_texture(240, 240, seed=300 + i)).save(cls / "test" / "good" / f"{i:03d}.png")
        img, mask = spot_image(240, 240, (40 + 60 * i, 30, 100 + 60 * i, 90), seed=i)
        Image.fromarray(img).save(cls / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(cls / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def learned_file(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("learned") / "L.pt"
    result = invoke("learn-prompts", "--data", toy, "--shots", 2, "--weights", "planted", "--epochs", 5,
                    "--synthetic", 4, "--out", out, "--threads", 1)
    assert result.exit_code == 0, result.output
    return out


def test_learn_prompts_never_reads_the_test_split(toy, tmp_path, monkeypatch):
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    out = tmp_path / "L.safetensors"
    result = invoke("learn-prompts", "--data", toy, "--shots", 2, "--weights", "planted", "--epochs", 2,
                    "--synthetic", 2, "--out", out)
    assert result.exit_code == 0, result.output
    read = [p for p in opened if "widget" in p]
    assert len(read) == 2 and all("/train/good/" in p for p in read), opened
    meta = LearnedPrompts.load(out).meta
    assert meta["classes"]["widget"]["images"] == [Path(p).relative_to(toy).as_posix() for p in read]


def test_the_file_records_its_provenance(learned_file, toy):
    lp = LearnedPrompts.load(learned_file)
    m = lp.meta
    assert m["model"] == "planted-vit" and m["shots"] == "2" and m["seed"] == 0
    assert m["text_fingerprint"] and m["weights"].startswith("planted")
    assert m["config"]["epochs"] == 5 and m["config"]["synthetic"] == 4
    info = m["classes"]["widget"]
    assert all(n.startswith("widget/train/good/") for n in info["images"]) and len(info["images"]) == 2
    e = lp.classes["widget"]
    assert e.normal.shape == (info["normal"], 8) and e.abnormal.shape == (info["abnormal"], 8)
    assert e.context_normal is not None and e.context_abnormal is not None


def test_same_seed_same_file(learned_file, toy, tmp_path):
    again, other = tmp_path / "again.pt", tmp_path / "other.pt"
    for out, seed in ((again, 0), (other, 1)):
        assert invoke("learn-prompts", "--data", toy, "--shots", 2, "--weights", "planted", "--epochs", 5,
                      "--synthetic", 4, "--seed", seed, "--out", out, "--threads", 1).exit_code == 0
    assert again.read_bytes() == learned_file.read_bytes()
    assert other.read_bytes() != learned_file.read_bytes()


@pytest.mark.parametrize("method", [m for m in METHODS.names() if not trait(METHODS.get(m), "needs_normals")])
def test_run_with_learned_prompts(method, learned_file, toy, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--shots", 0, "--learned", learned_file, "--data", toy, "--weights", "planted",
                    "--method", method, "--out", out, "--no-llm")
    assert result.exit_code == 0, result.output
    assert "learned" in result.output
    record = json.loads((out / "metrics.json").read_text())["config"]
    assert record["prompt_sources"][-1] == "learned"
    assert record["learned_prompts"]["check"].startswith("model and weights fingerprint match")
    assert record["learned_prompts"]["sha256"] and record["detector"]["learned"] == str(learned_file)
    rebuilt = Detector.from_config(record["detector"], cache_dir=None)
    assert rebuilt.sources[-1].name == "learned"
    assert "learned" in rebuilt.prompts("widget").abnormal_sources
    if method == "alfa":
        assert "learned" in (out / "report.html").read_text()


def test_other_weights_are_refused_with_one_line(learned_file, toy, tmp_path):
    result = invoke("run", "--shots", 0, "--learned", learned_file, "--data", toy, "--weights", "random",
                    "--out", tmp_path / "out")
    assert result.exit_code == 2
    errors = _errors(result)
    assert len(errors) == 1 and "learned with planted-vit" in errors[0] and "random weights" in errors[0]


def test_learn_prompts_bad_options(toy, tmp_path):
    for args, message in ((("--shots", "0"), "--shots"), (("--shots", "9"), "no class has enough"),
                          (("--shots", "1", "--epochs", "0"), "epochs"), (("--shots", "1", "--threads", "0"),
                                                                            "--threads")):
        result = invoke("learn-prompts", "--data", toy, "--weights", "planted", "--out", tmp_path / "x.pt", *args)
        assert result.exit_code == 2 and len(_errors(result)) == 1 and message in _errors(result)[0], result.output
    missing = invoke("run", "--shots", 0, "--learned", tmp_path / "nope.pt", "--data", toy, "--weights", "planted",
                     "--out", tmp_path / "o")
    assert missing.exit_code == 2 and "learned-prompt file not found" in _errors(missing)[0]
