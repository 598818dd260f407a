"""``alfa-ad ablate`` method rows: other registry methods (winclip, musc, patchknn) scored
beside ALFA's grid on the same model, through the same metrics and table code."""

from __future__ import annotations

import ast
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.ablation import ALL_METHODS, MethodConfig, method_configs, run_ablation
from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.evaluation.metrics import summarize
from alfa_ad.evaluation.resize import resize_for_evaluation
from alfa_ad.io.datasets import discover, ground_truth_mask
from alfa_ad.outputs.tables import METRICS
from alfa_ad.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ablate-methods") / "data")


@pytest.fixture(scope="module")
def dataset(demo_root):
    return discover(demo_root, None, "object")[0]


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    """Normal references: the good images of another synthetic draw (not the test images)."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("refs") / "data", n_good=4, n_defect=0, seed=7)
    return {"widget": sorted((root / "widget" / "test" / "good").glob("*.png"))}


@pytest.fixture(scope="module")
def detector():
    """A mini-CLIP ALFA detector (metrics that are not all 1.0, so agreement means something)."""
    return Detector(weights="mini", tile="none", cache_dir=None, batch_size=1)


def direct_metrics(det: Detector, samples, together: bool) -> dict:
    """What scoring ``samples`` with ``det.predict`` directly gives, with the exact metrics."""
    paths = [s.path for s in samples]
    results = det.predict(paths, "widget") if together else [det.predict([p], "widget")[0] for p in paths]
    labels = [s.label for s in samples]
    masks, maps = [], []
    for s, r in zip(samples, results):
        truth = ground_truth_mask(s, r.anomaly_map.shape[::-1], [])
        masks.append(resize_for_evaluation(truth.astype(np.float32)) >= 0.5)
        maps.append(resize_for_evaluation(r.anomaly_map))
    return summarize(labels, [r.score for r in results], np.stack(masks), np.stack(maps))


def test_method_names_come_from_the_registry(dataset, detector):
    assert [c.method for c in method_configs("winclip, musc,winclip")] == ["winclip", "musc"]
    assert [c.method for c in method_configs(ALL_METHODS)] == [n for n in METHODS.names() if n != "alfa"]
    assert method_configs("") == [] and method_configs(()) == []
    with pytest.raises(ValueError) as exc:
        method_configs("winclip,bogus")
    assert "'bogus'" in str(exc.value) and "\n" not in str(exc.value) and "patchknn" in str(exc.value)
    with pytest.raises(ValueError, match="'nope'"):  # before any image is scored
        run_ablation(detector, dataset, grid=(), methods=[MethodConfig("nope")])


@pytest.fixture(scope="module")
def method_rows(detector, dataset):
    import alfa_ad.detector as detector_module

    def no_second_model(*a, **k):
        raise AssertionError("a method row loaded a second model")

    skipped, progress = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detector_module, "load_backbone", no_second_model)
        rows = run_ablation(detector, dataset, grid=(), methods="winclip,musc,patchknn", on_skip=skipped.append,
                            on_progress=lambda label, n, total: progress.append((label, n, total)))
    return rows, skipped, progress


def test_method_rows_have_finite_metrics_and_say_what_ran(method_rows):
    rows, skipped, progress = method_rows
    assert [r.config.method for r in rows] == ["winclip", "musc"]
    for r in rows:
        m = r.metrics["widget"]
        assert all(m[k] is not None and math.isfinite(m[k]) and 0 <= m[k] <= 1 for k in METRICS), m
        assert r.images == 10 and r.latency_ms > 0
    winclip, musc = (r.config for r in rows)
    assert winclip.name == "method winclip (zero-shot; scales 2,3; masked aligner)"
    assert winclip.describe()["prompt sources"] == "winclip" and winclip.describe()["aligner"] == "masked"
    assert musc.name.startswith("method musc (zero-shot, scored per class as one batch (at most 64 images)")
    assert "scores depend on the batch" in musc.name and "degrees 1,3,5" in musc.name
    assert musc.describe()["prompt sources"] == "none (reads no prompt)"
    # patchknn without normals: skipped with a one-line reason, no row, no error
    assert len(skipped) == 1 and "\n" not in skipped[0]
    assert skipped[0].startswith("method patchknn: needs normal references") and "row left out" in skipped[0]
    assert ("patchknn: widget", 10, 10) in progress and ("musc: widget", 10, 10) in progress


def test_method_rows_equal_the_detector_run_directly(method_rows, detector, dataset):
    rows, _, _ = method_rows
    samples = dataset["widget"]
    for row in rows:
        det = Detector(detector.backbone, method=row.config.method, tile="none", cache_dir=None)
        expected = direct_metrics(det, samples, together=row.config.method == "musc")
        for m in METRICS:
            assert row.metrics["widget"][m] == pytest.approx(expected[m], abs=1e-3), (row.config.method, m)
    winclip = rows[0].metrics["widget"]
    assert 0.5 < winclip["image_auroc"] < 1.0  # mini-CLIP: not saturated, so agreement is a real check


def test_patchknn_with_normals_and_method_options(detector, dataset, normals):
    spec = MethodConfig("patchknn", (("masking", "pca"),))
    rows = run_ablation(detector, dataset, grid=(), methods=[spec, MethodConfig("winclip", (("scales", (2,)),))],
                        normals=normals)
    patchknn, winclip = rows
    assert patchknn.config.name.startswith("method patchknn (few-shot, 4 normals per class;")
    assert "masking pca" in patchknn.config.name
    assert winclip.config.name == "method winclip (zero-shot; scales 2; masked aligner)"
    det = Detector(detector.backbone, method="patchknn", masking="pca", tile="none", cache_dir=None)
    det.fit_normals(normals["widget"], max_leave_one_out=0)
    expected = direct_metrics(det, dataset["widget"], together=False)
    det = Detector(detector.backbone, method="winclip", scales=(2,), tile="none", cache_dir=None)
    expected_winclip = direct_metrics(det, dataset["widget"], together=False)
    for m in METRICS:
        assert patchknn.metrics["widget"][m] == pytest.approx(expected[m], abs=1e-3), m
        assert winclip.metrics["widget"][m] == pytest.approx(expected_winclip[m], abs=1e-3), m


def test_ablate_methods_option(demo_root, tmp_path):
    out = tmp_path / "abl"
    result = invoke("ablate", "--data", demo_root, "--weights", "planted", "--out", out, "--methods", "all")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "ablation.csv", newline="")))
    assert len(rows) == 17 + 2  # the grid as before, then winclip and musc; patchknn skipped
    method = [r for r in rows if r["configuration"].startswith("method ")]
    assert [r["configuration"].split()[1] for r in method] == ["winclip", "musc"]
    for r in method:
        assert all(0 <= float(r[m]) <= 1 for m in METRICS) and float(r["latency_ms_per_image"]) > 0
    assert "skipped: method patchknn: needs normal references" in " ".join(result.output.split())
    assert "17 configurations + 2 method rows" in result.output
    md = (out / "ablation.md").read_text()
    assert md.count("\n| ") == 20 and "- method rows: " in md and "method musc (" in md
    # the same numbers as alfa-ad run with that method, whole images
    for r in method:
        name = r["configuration"].split()[1]
        run_out = tmp_path / f"run-{name}"
        res = invoke("run", "--data", demo_root, "--weights", "planted", "--method", name, "--tile", "none",
                     "--no-overlays", "--out", run_out)
        assert res.exit_code == 0, res.output
        metrics = json.loads((run_out / "metrics.json").read_text())["metrics"]["widget"]
        for m in METRICS:
            assert float(r[m]) == pytest.approx(metrics[m], abs=1e-4), (name, m)


def test_ablate_fits_patchknn_on_shots_like_run(demo_root, tmp_path):
    refs = make_synthetic_dataset(tmp_path / "refs", n_good=3, n_defect=0, seed=5) / "widget" / "test" / "good"
    out = tmp_path / "abl"
    result = invoke("ablate", "--data", demo_root, "--weights", "planted", "--out", out, "--methods", "patchknn",
                    "--shots", "3", "--normals", refs)
    assert result.exit_code == 0, result.output
    row = [r for r in csv.DictReader(open(out / "ablation.csv", newline=""))
           if r["configuration"].startswith("method ")]
    assert len(row) == 1 and row[0]["configuration"].startswith("method patchknn (few-shot, 3 normals per class;")
    res = invoke("run", "--data", demo_root, "--weights", "planted", "--method", "patchknn", "--normals", refs,
                 "--tile", "none", "--no-overlays", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["widget"]
    for m in METRICS:
        assert float(row[0][m]) == pytest.approx(metrics[m], abs=1e-4), m
    short = invoke("ablate", "--data", demo_root, "--weights", "planted", "--out", tmp_path / "o2", "--methods",
                   "patchknn", "--shots", "4", "--normals", refs)
    assert short.exit_code == 2 and "has 3 normal images" in short.output and "--shots 4" in short.output
    unused = invoke("ablate", "--data", demo_root, "--weights", "planted", "--out", tmp_path / "o3", "--methods",
                    "winclip", "--shots", "2")
    assert unused.exit_code == 2 and "--shots/--normals fit the method rows that need normal references" in unused.output


def test_ablate_unknown_method_is_a_one_line_error(demo_root, tmp_path):
    result = invoke("ablate", "--data", demo_root, "--weights", "planted", "--out", tmp_path / "o",
                    "--methods", "winclip,bogus")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--methods" in lines[0] and "'bogus'" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", ["alfa_ad/ablation.py", "alfa_ad/cli/ablate.py"])
def test_ablation_code_stays_small(path):
    text = (ROOT / path).read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400, path
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 < 80, (path, node.name)
