"""Every output tells the truth: the run record against what ran, decisions and
masks, options that cannot apply, one-line errors, explanations."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.scoring.masks import defect_mask

from conftest import grey_texture, spot_image

SMALL_VIT = "ViT-S-32"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _errors(result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.startswith("error:")]


def _noisy(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = grey_texture(h, w, seed).astype(float) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """MVTec layout with train/good (4 normals), test good + spots, and a calibration folder."""
    root = tmp_path_factory.mktemp("truth")
    data = root / "data"
    cls = data / "widget"
    for i in range(4):
        (cls / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noisy(200, 320, 100 + i)).save(cls / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        (cls / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noisy(200, 320, 200 + i)).save(cls / "test" / "good" / f"{i:03d}.png")
    for i, box in enumerate([(30, 220, 70, 290), (140, 20, 185, 60)]):
        img, mask = spot_image(200, 320, box, seed=i)
        (cls / "test" / "spot").mkdir(parents=True, exist_ok=True)
        (cls / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(cls / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(cls / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    cal = root / "cal"
    cal.mkdir()
    for i in range(3):
        Image.fromarray(_noisy(200, 320, 300 + i)).save(cal / f"{i}.png")
    return data, cal


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from alfa_ad.model import load_backbone

    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(load_backbone(SMALL_VIT, weights="random", seed=1, device="cpu").clip.state_dict(), path)
    return path


WEIGHTS = {
    "planted": ("--weights", "planted"),
    "random": ("--weights", "random", "--model", SMALL_VIT),
    "checkpoint": ("--model", SMALL_VIT, "--checkpoint"),  # the path is appended
}
MODES = {
    "zero": (),
    "zero-calibrated": ("--calibrate", "CAL"),
    "2-shot": ("--shots", 2, "--seed", 3),
    "2-shot-calibrated": ("--shots", 2, "--calibrate", "CAL"),
}


# every weights kind, every shots mode and every calibration mode (each mode with the
# planted model; the real-architecture kinds with the two extremes, to bound the time)
CASES = [("planted", mode) for mode in MODES] + [("random", "zero"), ("checkpoint", "2-shot-calibrated")]


@pytest.mark.parametrize("kind, mode", CASES)
def test_run_record_is_true_for_weights_shots_and_calibration(layout, checkpoint, tmp_path, kind, mode):
    data, cal = layout
    args = list(WEIGHTS[kind]) + ([checkpoint] if kind == "checkpoint" else [])
    args += [cal if a == "CAL" else a for a in MODES[mode]]
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--no-llm", "--no-overlays", *args)
    assert result.exit_code == 0, result.output
    m = _json(out / "metrics.json")
    rec, facts = m["config"], m["classes"]["widget"]
    assert _json(out / "scores.json")["config"] == rec  # one record for every file
    ws = rec["weights_source"]
    assert ws["source"] == kind and rec["model"] == ("planted-vit" if kind == "planted" else SMALL_VIT)
    assert "pretrained" not in rec  # no pretrained tag was used in any of these runs
    if kind == "checkpoint":
        assert rec["weights_file"] == str(checkpoint) and len(rec["weights_sha256"]) == 64
        assert rec["detector"]["checkpoint"] == str(checkpoint)
    else:
        assert "weights_file" not in rec and "weights_sha256" not in rec
    assert ("weights_seed" in rec) == (kind == "random")
    assert rec["prompt_sources"] == ["template"] and facts["prompt_sources"] == {"template": 144}
    few = mode.startswith("2-shot")
    calibrated = few or mode.endswith("calibrated")
    assert rec["shots"] == ("2" if few else "0")
    for key in ("seed", "normals", "coreset"):
        assert (key in rec) == few, key
    assert ("references" in facts) == few
    if few:
        assert rec["seed"] == (3 if mode == "2-shot" else 0) and len(facts["references"]) == 2
        assert all(Path(p).parent == data / "widget" / "train" / "good" for p in facts["references"])
    assert ("calibration" in rec) == calibrated and ("fpr" in rec) == calibrated
    assert ("thresholds" in facts) == calibrated and ("decisions" in facts) == calibrated
    if calibrated:
        assert rec["calibration"] == (str(cal) if "calibrated" in mode else "leave-one-out")
        assert facts["decisions"]["images"] == 4
    rows = list(csv.DictReader(open(out / "scores.csv", newline="")))
    assert all((r["decision"] != "") == calibrated for r in rows)
    assert all((r["mask_area"] != "") == calibrated for r in rows)
    md = (out / "metrics.md").read_text()
    assert ("thresholds: image" in md) == calibrated and ("references (2)" in md) == few
    assert ("sha256" in md) == (kind == "checkpoint")


def test_calibrated_masks_cover_spots_and_good_images_get_none(layout, tmp_path):
    data, _ = layout
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm", "--shots", 4)
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name + r["defect_type"]: r for r in csv.DictReader(open(out / "scores.csv", newline=""))}
    facts = _json(out / "metrics.json")["classes"]["widget"]
    counts = facts["decisions"]
    assert counts["images"] == 4 and counts["tp"] == 2 and counts["fn"] == 0
    assert counts["flagged"] == 2 + counts["fp"] and counts["tn"] + counts["fp"] == 2
    assert f"{counts['flagged']} of 4 flagged at FPR 0.01; thresholds image" in result.output
    # four references resolve the false-positive rate only to ~1/5: a clean image may be flagged,
    # but an image judged normal never has a mask, and at least one clean image is judged normal
    good = [rows[n + "good"] for n in ("000.png", "001.png")]
    assert any(r["decision"] == "normal" for r in good)
    for r in good:
        if r["decision"] == "normal":
            assert float(r["mask_area"]) == 0 and not (out / "masks" / "widget" / "good" / Path(r["path"]).name).exists()
    for name in ("000.png", "001.png"):
        assert rows[name + "spot"]["decision"] == "anomalous" and float(rows[name + "spot"]["mask_area"]) > 0
        gt = np.asarray(Image.open(data / "widget" / "ground_truth" / "spot" / name.replace(".png", "_mask.png"))) > 0
        pred = np.asarray(Image.open(out / "masks" / "widget" / "spot" / name)) > 0
        iou = (gt & pred).sum() / (gt | pred).sum()
        assert iou >= 0.5, iou
    assert (out / "overlays" / "widget" / "spot" / "000.png").is_file()


def test_defect_mask_half_height_per_region():
    amap = np.zeros((20, 40), dtype=np.float32)
    amap[5:10, 5:10] = 1.0  # strong defect
    amap[5:10, 25:30] = 0.4  # weak defect
    amap[4:11, 4:11] = np.maximum(amap[4:11, 4:11], 0.3)  # halo of the strong one
    mask = defect_mask(amap, threshold=0.1)
    assert mask[5:10, 5:10].all() and mask[5:10, 25:30].all()  # both defects, each at its own level
    assert not mask[4, 4] and mask.sum() == 50  # the halo (0.3 < 0.1 + 0.5 * 0.9) is cut
    assert not defect_mask(amap, threshold=1.0).any()
    naive = amap > 0.1  # what a plain threshold would flag
    assert naive.sum() > mask.sum()


# ------------------------------------------------------------------ options that cannot apply
def test_normals_without_shots_means_few_shot_with_all_references(layout, tmp_path):
    data, cal = layout
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm", "--no-overlays",
                    "--normals", cal)
    assert result.exit_code == 0, result.output
    m = _json(out / "metrics.json")
    assert m["config"]["shots"] == "all" and m["config"]["normals"] == str(cal)
    assert len(m["classes"]["widget"]["references"]) == 3 and "all-shot" in result.output


def test_class_name_and_prompt_class_change_the_prompts(layout, tmp_path):
    data, _ = layout
    lib = tmp_path / "lib.json"
    from alfa_ad.prompting.library import new_library, save_library

    library = new_library()
    library["classes"]["hazelnut"] = {"normal": ["A normal hazelnut without a spot."],
                                      "abnormal": ["A hazelnut with a red spot."]}
    save_library(lib, library)
    out = tmp_path / "named"
    result = invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-overlays", "--prompts", lib,
                    "--class-name", "metal part", "--prompt-class", "hazelnut", "--explain", 5)
    assert result.exit_code == 0, result.output
    m = _json(out / "metrics.json")
    facts = m["classes"]["widget"]
    assert facts["prompt_name"] == "metal part" and facts["prompt_class"] == "hazelnut"
    assert facts["prompt_sources"] == {"template": 144, "llm": 2}
    assert m["config"]["class_names"] == {"widget": "metal part"}
    assert m["config"]["prompt_classes"] == {"widget": "hazelnut"}
    row = _json(out / "scores.json")["images"][0]
    assert row["total_normal"] == 72 + 1 and row["class"] == "widget"
    assert len(row["descriptors"]) == 2 and {d["side"] for d in row["descriptors"]} == {"normal", "abnormal"}
    assert "only 2 descriptions exist; --explain 5 gives 2" in result.output
    det = Detector(weights="planted", cache_dir=None, llm_prompts=False)
    assert "metal part" in det.prompts("metal part").normal[0]


@pytest.mark.parametrize("args, fragment", [
    (("--shots", 0, "--seeds", "0,1"), "--seeds draws different references"),
    (("--shots", 0, "--normals", "CAL"), "--normals gives references for few-shot"),
    (("--shots", 999), "has 4 normal images"),
    (("--device", "cuda:7" if torch.cuda.is_available() else "cuda"), "--device"),
    (("--device", "banana"), "--device 'banana' is not a device name"),
    (("--class-name", "a=b"), "no class 'a' in the data"),
    (("--explain", -1), "--explain must be 0 or more"),
    (("--tile", "huge"), "--tile must be auto, none"),
])
def test_usage_mistakes_are_one_line_errors_before_the_model_loads(layout, tmp_path, args, fragment):
    data, cal = layout
    args = [cal if a == "CAL" else a for a in args]
    result = invoke("run", "--data", data, "--out", tmp_path / "out", "--weights", "planted", *args)
    assert result.exit_code == 2, result.output
    lines = _errors(result)
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def test_out_naming_a_file_is_a_one_line_error(layout, tmp_path):
    data, _ = layout
    file = tmp_path / "taken"
    file.write_text("mine")
    result = invoke("run", "--data", data, "--out", file, "--weights", "planted")
    assert result.exit_code == 2 and len(_errors(result)) == 1 and str(file) in _errors(result)[0]
    assert file.read_text() == "mine"


def test_plain_folder_with_shots_points_to_normals(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.fromarray(grey_texture(64, 64)).save(folder / "a.png")
    result = invoke("run", "--data", folder, "--out", tmp_path / "out", "--weights", "planted", "--shots", 2)
    assert result.exit_code == 2
    line = _errors(result)[0]
    assert "plain folder" in line and "--normals" in line and "object/train/good" not in line


def test_generate_prompts_does_not_claim_a_file_it_never_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "lib.json"
    result = invoke("generate-prompts", "--classes", "widget", "--base-url", "http://127.0.0.1:9/v1",
                    "--out", out, "--retries", 0, "--timeout", 2, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1 and not out.exists()
    assert "no library written" in result.output and "classes in" not in result.output


def test_long_class_names_are_not_cut_in_the_table(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    long = "a_really_long_class_folder_name_that_goes_past_eighty_columns_of_terminal_width"
    shutil.move(data / "widget", data / long)
    result = invoke("run", "--data", data, "--out", tmp_path / "out", "--weights", "planted", "--no-overlays")
    assert result.exit_code == 0, result.output
    assert long in result.output.replace("\n", "").replace("│", "").replace(" ", "")
