"""``alfa-ad ablate``: the declarative grid, the shared forward pass, the files,
and agreement with ``alfa-ad run`` for the same configuration; ``run --aligner``."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.ablation import FULL, GRID, AblationConfig, applicable
from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.outputs.tables import METRICS


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ablate") / "data")


def test_grid_covers_the_papers_tables_and_drops_repeats():
    names = {c.name for c in GRID}
    assert len(names) == len(GRID)
    assert {c.aligner for c in GRID} == {"none", "masked", "value", "dense"}
    assert {c.scales for c in GRID} == {(2,), (2, 3), (2, 3, 4, 5)}
    assert {c.windows for c in GRID if c.scales == (2, 3, 4, 5)} == {((2, 1), (3, 2), (4, 3), (5, 3)),
                                                                   ((2, 1), (3, 1), (4, 1), (5, 1))}
    assert {c.text_projection for c in GRID} == {"none", "rank1"}
    assert {c.contextual for c in GRID} == {"off", "global", "soft", "all"}
    assert {c.global_in_map for c in GRID} == {True, False}
    assert {c.refine for c in GRID} == {True, False}
    full = applicable(GRID, {"template", "llm", "learned"})
    assert len(full) == len(GRID) and FULL in full
    # without LLM prompts the "+ LLM" rows repeat the template rows: dropped; variants of the
    # full model keep their other difference and run on templates only
    templates = applicable(GRID, {"template"})
    assert all(c.sources == ("template",) for c in templates)
    keys = {(c.contextual, c.aligner, c.windows, c.text_projection, c.global_in_map, c.refine) for c in templates}
    assert len(keys) == len(templates) == 17
    assert not any(c.name == "default + learned prompts" for c in applicable(GRID, {"template", "llm"}))
    assert applicable([AblationConfig("x", ("llm",))], {"template"}) == []


@pytest.fixture(scope="module")
def ablation_out(demo_root, tmp_path_factory):
    """One ``alfa-ad ablate`` run on the demo data (shared by the tests below)."""
    out = tmp_path_factory.mktemp("ablation") / "abl"
    result = invoke("ablate", "--data", demo_root, "--weights", "planted", "--out", out)
    return out, result


def test_ablate_writes_one_row_per_configuration(ablation_out):
    out, result = ablation_out
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "ablation.csv", newline="")))
    assert len(rows) == 17 and all(r["class"] == "widget" for r in rows)  # one class: no mean rows
    for r in rows:
        assert all(0 <= float(r[m]) <= 1 for m in METRICS)
        assert float(r["latency_ms_per_image"]) > 0
    by = {(r["aligner"], r["scales"], r["window strides"], r["S_c"], r["text projection"]): r for r in rows}
    # the class-token-only rows cannot localize; every aligner row does (planted cue)
    for key, r in by.items():
        if key[0] == "none":
            assert float(r["pixel_auroc"]) < 0.8, key
        elif key[4] == "none":
            assert float(r["pixel_auroc"]) >= 0.95, key
    # masked windows cost more than the class token alone; more scales cost more
    assert float(by["masked", "2,3", "1,1", "all", "none"]["latency_ms_per_image"]) > float(
        by["none", "2,3,4,5", "1,2,3,3", "all", "none"]["latency_ms_per_image"])
    md = (out / "ablation.md").read_text()
    assert md.count("\n| ") == 18 and "planted weights" in md and "ms / image" in md
    assert "17 configurations" in result.output


def test_ablation_row_equals_alfa_ad_run(demo_root, ablation_out, tmp_path):
    """The shared pass computes what a standalone run of the same configuration computes."""
    out, result = ablation_out
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "ablation.csv", newline="")))
    for aligner, scales, strides, placement in (
            ("masked", "2,3,4,5", "1,2,3,3", "off"), ("dense", "2,3,4,5", "1,2,3,3", "off"),
            ("masked", "2,3,4,5", "1,1,1,1", "off"), ("masked", "2,3", "1,1", "off"),
            ("masked", "2,3,4,5", "1,2,3,3", "all")):
        row = next(r for r in rows if r["aligner"] == aligner and r["scales"] == scales and r["S_c"] == placement
                   and r["window strides"] == strides and r["text projection"] == "none"
                   and r["global in map"] == "yes")
        run_out = tmp_path / f"run-{aligner}-{scales}-{strides}-{placement}"
        result = invoke("run", "--data", demo_root, "--weights", "planted", "--tile", "none", "--aligner", aligner,
                        "--scales", scales, "--window-strides", strides, "--contextual", placement, "--no-overlays",
                        "--out", run_out)
        assert result.exit_code == 0, result.output
        metrics = json.loads((run_out / "metrics.json").read_text())["metrics"]["widget"]
        for m in METRICS:
            assert float(row[m]) == pytest.approx(metrics[m], abs=1e-4), (aligner, scales, m)


def test_ablate_needs_labelled_data(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "a.png")
    result = invoke("ablate", "--data", folder, "--weights", "planted", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "no labelled test images" in result.output


def test_run_aligner_option_is_recorded_and_rebuilds(demo_root, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--data", demo_root, "--weights", "planted", "--aligner", "dense", "--no-overlays",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "dense aligner" in result.output
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["aligner"] == "dense" and config["detector"]["aligner"] == "dense"
    det = Detector.from_config(config["detector"], cache_dir=None)
    assert det.method.aligner.name == "dense" and det.config.aligner == "dense"
    bad = invoke("run", "--data", demo_root, "--weights", "planted", "--aligner", "bogus", "--out", tmp_path / "b")
    assert bad.exit_code == 2
    assert "--aligner must be one of masked, value, dense, none, got 'bogus'" in bad.output
    compat = invoke("run", "--data", demo_root, "--weights", "planted", "--method", "winclip", "--anomalib-compat",
                    "--aligner", "value", "--out", tmp_path / "c")
    assert compat.exit_code == 2 and "--anomalib-compat" in compat.output
