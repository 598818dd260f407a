"""The command line (alfa-ad demo / run) through typer's CliRunner, planted weights only."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.outputs.writers import CSV_FIELDS

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        return list(reader)


# ------------------------------------------------------------------ demo
def test_demo_writes_all_outputs(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out)
    assert result.exit_code == 0, result.output
    res = out / "results"
    for name in ("scores.csv", "scores.json", "metrics.json"):
        assert (res / name).is_file(), name
    metrics = json.loads((res / "metrics.json").read_text())
    # make_synthetic_dataset: 4 good + 6 red-spot images of class "widget"
    assert metrics["n_images"] == 10 and metrics["n_errors"] == 0
    assert metrics["metrics"]["widget"]["pixel_auroc"] >= 0.95
    assert metrics["metrics"]["widget"]["image_auroc"] == 1.0
    scores = json.loads((res / "scores.json").read_text())
    assert "planted" in scores["weights"]
    assert scores["errors"] == []
    assert len(scores["images"]) == 10
    rows = _read_csv(res / "scores.csv")
    assert sorted(r["label"] for r in rows) == ["0"] * 4 + ["1"] * 6
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    overlays = sorted((res / "overlays" / "widget").rglob("*.png"))
    assert len(overlays) == 10
    assert {p.parent.name for p in overlays} == {"good", "spot"}
    for p in overlays:
        w, h = _valid_png(p)  # [original | overlay | colour bar] side by side
        assert h == 240 and 2 * 320 < w < 3 * 320
    assert "px AUROC" in result.output and "PRO" in result.output and "planted" in result.output


# ------------------------------------------------------------------ run on a dataset with bad files
def _png_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture
def dataset_with_bad_files(tmp_path) -> Path:
    root = make_synthetic_dataset(tmp_path / "data")
    good = root / "widget" / "test" / "good"
    (good / "corrupt.png").write_bytes(b"this is not a png at all" * 8)
    whole = _png_bytes(good / "000.png")
    (good / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return root


def test_run_reports_bad_files_and_scores_the_rest(dataset_with_bad_files, tmp_path):
    data, out = dataset_with_bad_files, tmp_path / "out"
    result = invoke("run", "--data", data, "--weights", "planted", "--out", out)
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "scores.json").read_text())
    errors = scores["errors"]
    assert len(errors) == 2
    assert any("corrupt.png" in e for e in errors) and any("truncated.png" in e for e in errors)
    assert all("\n" not in e for e in errors)
    assert "corrupt.png" in result.output and "truncated.png" in result.output
    scored = {Path(r["path"]).name for r in scores["images"]}
    assert len(scores["images"]) == 10
    assert "corrupt.png" not in scored and "truncated.png" not in scored
    assert len(_read_csv(out / "scores.csv")) == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 10 and metrics["n_errors"] == 2
    assert metrics["metrics"]["widget"]["pixel_auroc"] >= 0.95
    overlays = sorted((out / "overlays").rglob("*.png"))
    assert len(overlays) == 10
    assert not (out / "overlays" / "widget" / "good" / "corrupt.png").exists()

    # second run into the same --out after one more image becomes unreadable
    victim = data / "widget" / "test" / "spot" / "002.png"
    before = {p: p.read_bytes() for p in overlays}
    victim.chmod(0)
    try:
        if os.access(victim, os.R_OK):  # root ignores permissions: make it undecodable instead
            victim.chmod(0o644)
            victim.write_bytes(b"")
        result2 = invoke("run", "--data", data, "--weights", "planted", "--out", out)
    finally:
        victim.chmod(0o644)
    assert result2.exit_code == 0, result2.output
    scores2 = json.loads((out / "scores.json").read_text())
    assert len(scores2["errors"]) == 3 and any("002.png" in e for e in scores2["errors"])
    assert len(scores2["images"]) == 9
    # the folder now describes the second run only: every image it scored has its overlay,
    # and the victim's overlay from the first run (describing scores no file lists) is gone
    victim_overlay = out / "overlays" / "widget" / "spot" / "002.png"
    assert not victim_overlay.exists()
    for p in before:
        if p != victim_overlay:
            assert _valid_png(p)[1] == 240, p
    assert "earlier run's outputs" in result2.output
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_run_with_winclip(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=3, seed=1)
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--weights", "planted", "--method", "winclip", "--out", out)
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "scores.json").read_text())
    assert scores["config"]["method"] == "winclip"
    assert scores["config"]["prompt_sources"] == ["winclip"]
    assert {r["method"] for r in scores["images"]} == {"winclip"}
    assert len(scores["images"]) == 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["widget"]["pixel_auroc"] >= 0.95
    assert metrics["metrics"]["widget"]["image_auroc"] == 1.0


def test_run_on_plain_folder_has_no_labels_and_no_metrics(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(100, 150), (90, 60)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = invoke("run", "--data", folder, "--weights", "planted", "--class-name", "gear", "--out", out)
    assert result.exit_code == 0, result.output
    rows = _read_csv(out / "scores.csv")
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png"]
    assert all(r["label"] == "" and r["defect_type"] == "" for r in rows)
    assert {r["class"] for r in rows} == {"gear"}
    assert not (out / "metrics.json").exists()  # nothing to measure without labels
    w0, h0 = _valid_png(out / "overlays" / "gear" / "images" / "img0.png")
    w1, h1 = _valid_png(out / "overlays" / "gear" / "images" / "img1.png")
    assert (h0, h1) == (100, 90) and w0 > 300 and w1 > 120  # image | overlay | colour bar


# ------------------------------------------------------------------ usage errors (exit 2)
def test_run_missing_data_folder(tmp_path):
    missing = tmp_path / "nonexistent"
    result = invoke("run", "--data", missing, "--weights", "planted", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and str(missing) in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "out" / "scores.json").exists()


def test_run_unknown_class_lists_available(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    result = invoke("run", "--data", data, "--weights", "planted", "--classes", "nosuch",
                    "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1
    assert "nosuch" in lines[0] and "available: widget" in lines[0]


def test_run_rejects_bad_shots(tmp_path):
    result = invoke("run", "--data", tmp_path, "--shots", "three", "--weights", "planted")
    assert result.exit_code == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and "--shots must be a number or 'all'" in lines[0]


@pytest.mark.parametrize("args,fragment", [
    (("--method", "bogus"), "--method must be one of alfa, winclip"),
    (("--scales", "2,x"), "--scales must be comma-separated integers"),
    (("--scales", "0"), "--scales must be integers >= 1"),
    (("--batch-size", "0"), "--batch-size must be an integer >= 1 or auto, got '0'"),
    (("--batch-size", "many"), "--batch-size must be an integer >= 1 or auto, got 'many'"),
    (("--weights", "bogus"), "--weights must be one of"),
])
def test_run_rejects_bad_options(tmp_path, args, fragment):
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    result = invoke("run", "--data", data, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and fragment in lines[0], result.output


def test_run_scale_larger_than_grid_is_a_usage_error(tmp_path):
    # the planted model has a 15x15 patch grid: a 16-patch window cannot fit
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    result = invoke("run", "--data", data, "--weights", "planted", "--scales", "16", "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert "does not fit the 15x15 patch grid" in result.output


@pytest.mark.parametrize("name", ["no[red]where", "q[/]z"])
def test_error_messages_show_paths_verbatim(tmp_path, name):
    missing = tmp_path / name
    result = runner.invoke(app, ["run", "--data", str(missing), "--weights", "planted"])
    assert result.exit_code == 2
    assert str(missing) in result.output


def test_run_on_one_image_file_scores_it(tmp_path):
    file = tmp_path / "one.png"
    Image.new("RGB", (8, 8)).save(file)
    result = invoke("run", "--data", file, "--weights", "planted", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = _read_csv(tmp_path / "out" / "scores.csv")
    assert [Path(r["path"]) for r in rows] == [file] and rows[0]["class"] == "object"
    other = tmp_path / "notes.txt"
    other.write_text("x")
    result = invoke("run", "--data", other, "--weights", "planted", "--out", tmp_path / "out2")
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and str(other) in lines[0] and "neither a folder nor an image file" in lines[0]


def test_images_with_same_stem_get_separate_overlays(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (50, 40), (128, 128, 128)).save(folder / "part.png")
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "part.jpg")
    out = tmp_path / "out"
    result = invoke("run", "--data", folder, "--weights", "planted", "--out", out)
    assert result.exit_code == 0, result.output
    assert len(_read_csv(out / "scores.csv")) == 2
    assert len(list((out / "overlays").rglob("*.png"))) == 2


def test_skipped_file_names_are_shown_verbatim(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(folder / "ok.png")
    (folder / "bad[bold]name.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = invoke("run", "--data", folder, "--weights", "planted", "--out", out)
    assert result.exit_code == 0, result.output
    errors = json.loads((out / "scores.json").read_text())["errors"]
    assert len(errors) == 1 and "bad[bold]name.png" in errors[0]  # the JSON is right ...
    assert "bad[bold]name.png" in result.output  # ... the console line is not
