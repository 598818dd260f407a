"""patchknn exported with its memory bank as a graph input (export/graphs.py): ONNX Runtime
and OpenVINO give torch's scores and maps for banks of any size, the bank really is an
input (a graph with the trace's bank baked in would not follow a refit), the CLI exports
it and runs few-shot on it, and what cannot be exported says so on one line.  Skipped when
the export extra is not installed."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")

from alfa_ad.backends.base import create_backend  # noqa: E402
from alfa_ad.cli import app  # noqa: E402
from alfa_ad.demo import make_synthetic_dataset  # noqa: E402
from alfa_ad.detector import Detector  # noqa: E402
from alfa_ad.export import export_detector, load_manifest  # noqa: E402

from conftest import grey_texture, perturbed_planted, spot_image  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def det():
    """The planted model's architecture with perturbed image-tower weights (seeded)."""
    return perturbed_planted(method="patchknn")


@pytest.fixture(scope="module")
def exported(det, tmp_path_factory):
    folder = tmp_path_factory.mktemp("patchknn_onnx")
    export_detector(det, folder, "onnx")
    return folder


@pytest.fixture(scope="module")
def images():
    tests = [Image.fromarray(spot_image(seed=i, box=(20 + 17 * i, 30 + 29 * i, 60 + 17 * i, 90 + 29 * i))[0])
             for i in range(3)] + [Image.fromarray(grey_texture(200, 320, seed=50))]
    refs = [Image.fromarray(grey_texture(200, 320, seed=s)) for s in range(4)]
    return tests, refs


def _agree(det, backend, pixels, counts):
    with torch.inference_mode():
        want = det.method(pixels, counts)
    got = backend(pixels, counts)
    assert (got.scores - want.scores).abs().max() <= TOL
    assert (got.maps - want.maps).abs().max() <= TOL
    assert (got.embeddings - want.embeddings).abs().max() <= TOL
    assert not got.kept_normal.any() and got.kept_normal.shape == want.kept_normal.shape
    return got


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_the_export_gives_torch_scores_for_any_bank(det, exported, images, tmp_path, name):
    if name == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
        folder = tmp_path / "ov"
        export_detector(det, folder, "openvino")
    else:
        folder = exported
    tests, refs = images
    pixels = det.backbone.preprocess(tests)
    counts = det.class_text("widget")
    backend = create_backend(name, det, folder)
    sizes = []
    for fit in ({"coreset": 16}, {"coreset": None}):  # two bank sizes, neither the trace's 11 rows
        det.fit_normals(refs, seed=0, **fit)
        sizes.append(det.method.bank_size)
        _agree(det, backend, pixels, counts)
    assert sizes[0] == 16 < sizes[1]


def test_the_bank_is_an_input_not_a_constant(det, exported, images):
    """Refitting on other references changes the export's scores exactly as torch's: a
    graph with a bank baked in at trace time would keep the first scores."""
    tests, refs = images
    pixels = det.backbone.preprocess(tests)
    counts = det.class_text("widget")
    backend = create_backend("onnxruntime", det, exported)
    det.fit_normals(refs, seed=0)
    first = _agree(det, backend, pixels, counts).scores
    det.fit_normals([Image.fromarray(spot_image(seed=7)[0])] + refs[:1], seed=0)  # a spot among the references
    second = _agree(det, backend, pixels, counts).scores
    assert (first - second).abs().max() > 1e-3


def test_the_manifest_names_the_bank_input_and_stores_no_prompts(det, exported):
    m = load_manifest(exported)
    assert m.inputs == ("pixels", "bank") and m.outputs == ("scores", "maps", "embeddings")
    assert m.identity["method"] == "patchknn" and m.identity["options"]["layer"] == det.method.layer
    assert not (exported / "texts.npz").exists() and m.classes == {}
    other = Detector(det.backbone, method="patchknn", top_percent=5.0, cache_dir=None)
    with pytest.raises(ValueError, match="^the exported model was made with options="):
        create_backend("onnxruntime", other, exported)


def test_what_cannot_be_exported_says_so_on_one_line(det, exported, tmp_path):
    for kwargs, message in (({"method": "musc"}, "^--method musc cannot be exported"),
                            ({"method": "patchknn", "masking": "pca"}, "^patchknn exports with the bank scorer and "
                                                                       "masking off")):
        d = Detector(det.backbone, cache_dir=None, **kwargs)
        with pytest.raises(ValueError, match=message) as err:
            export_detector(d, tmp_path / "x", "onnx")
        assert "\n" not in str(err.value)
    unfitted = Detector(det.backbone, method="patchknn", cache_dir=None)
    backend = create_backend("onnxruntime", unfitted, exported)
    with pytest.raises(ValueError, match="scores against a memory bank: fit_normals"):
        backend(det.backbone.preprocess([Image.fromarray(grey_texture(200, 320, seed=1))]), (1, 1))


def test_cli_exports_patchknn_and_runs_it_few_shot(tmp_path):
    out = tmp_path / "exp"
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--method", "patchknn", "--weights", "planted", "--out", str(out),
                              "--check-images", "6"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    agreement = load_manifest(out).agreement
    assert agreement["images"] == 3 and agreement["max_score_difference"] <= TOL
    assert "memory bank from the first 3" in agreement["checked_on"]
    data = make_synthetic_dataset(tmp_path / "data", n_good=3, n_defect=3, seed=1)
    refs = make_synthetic_dataset(tmp_path / "refs", n_good=2, n_defect=0, seed=2) / "widget" / "test" / "good"
    runs = {}
    for backend in ("torch", "onnxruntime"):
        extra = ["--exported", str(out)] if backend != "torch" else []
        res = runner.invoke(app, ["run", "--method", "patchknn", "--normals", str(refs), "--weights", "planted", "--data",
                                  str(data), "--out", str(tmp_path / backend), "--backend", backend, "--no-overlays",
                                  "--cache-dir", str(tmp_path / "cache"), *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        with open(tmp_path / backend / "scores.csv") as f:
            runs[backend] = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    assert runs["torch"].keys() == runs["onnxruntime"].keys() and len(runs["torch"]) >= 4
    assert max(abs(runs["torch"][k] - runs["onnxruntime"][k]) for k in runs["torch"]) <= TOL
    res = runner.invoke(app, ["export", "--method", "musc", "--weights", "planted", "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and "--method musc cannot be exported" in res.output
