"""alfa-ad export and the onnxruntime / openvino backends: agreement with torch (fp32 to
1e-4 on scores, maps and embeddings; int8: the encoder quantized, scores close), the
manifest, and the errors.  Skipped when the export extra is not installed."""

from __future__ import annotations

import csv
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")

from alfa_ad.backends.base import create_backend  # noqa: E402
from alfa_ad.backends.ort import OnnxRuntimeBackend  # noqa: E402
from alfa_ad.cli import app  # noqa: E402
from alfa_ad.demo import make_synthetic_dataset  # noqa: E402
from alfa_ad.detector import Detector  # noqa: E402
from alfa_ad.export import export_detector, load_manifest  # noqa: E402
from alfa_ad.export.writer import write_onnx  # noqa: E402
from alfa_ad.registry import BACKENDS  # noqa: E402

FP32_TOL = 1e-4  # measured: about 5e-7 (scores) and 1e-6 (maps) on these weights
CLASS = "widget"


@pytest.fixture(scope="module")
def det():
    """The planted model's architecture with random image-tower weights (seeded)."""
    from conftest import perturbed_planted

    return perturbed_planted(llm_prompts=False)


@pytest.fixture(scope="module")
def traced(det, tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "model.onnx"
    write_onnx(det, path)
    return path


@pytest.fixture(scope="module")
def pixels(det):
    from conftest import spot_image
    from PIL import Image

    images = [Image.fromarray(spot_image(seed=i, box=(20 + 17 * i, 30 + 29 * i, 60 + 17 * i, 90 + 29 * i))[0])
              for i in range(6)] + [Image.fromarray(spot_image(seed=9, box=(0, 0, 0, 0))[0])]
    return det.backbone.preprocess(images)


def _export(det, traced, folder, fmt, precision):
    export_detector(det, folder, fmt, precision, classes=[CLASS], traced=traced)
    return create_backend({"onnx": "onnxruntime", "openvino": "openvino"}[fmt], det, folder)


def _check_fp32(det, backend, pixels):
    normal, abnormal = det.class_text(CLASS)
    # other batch size and prompt counts than the trace: every axis is dynamic
    for px, text in ((pixels, (normal, abnormal)), (pixels[:3], (normal[:9], abnormal[:4]))):
        ref, out = det.method(px, text), backend(px, text)
        for field in ("scores", "global_scores", "maps", "embeddings"):
            a, b = getattr(ref, field), getattr(out, field)
            assert a.shape == b.shape
            assert (a - b).abs().max().item() <= FP32_TOL, field
        assert torch.equal(ref.kept_normal, out.kept_normal) and torch.equal(ref.kept_abnormal, out.kept_abnormal)
    assert ref.maps.std() > 1e-4  # the maps compared are not flat


def test_onnxruntime_fp32_matches_torch(det, traced, pixels, tmp_path):
    _check_fp32(det, _export(det, traced, tmp_path / "onnx", "onnx", "fp32"), pixels)


def test_openvino_fp32_matches_torch(det, traced, pixels, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    _check_fp32(det, _export(det, traced, tmp_path / "ov", "openvino", "fp32"), pixels)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_quantizes_the_encoder_only_and_stays_close(det, traced, pixels, tmp_path, fmt):
    """int8 agreement depends on the weights: measured max |score diff| 1.8e-3 (ONNX Runtime)
    and 8e-4 (OpenVINO), Spearman 0.93 and 1.0, on ViT-S-32 with random weights; on this
    randomised planted model (a large constant "bias" axis next to a small cue, the worst
    case for per-tensor activation scales) about 0.18.  The bound here is that worst case."""
    import onnx

    if fmt == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    backend = _export(det, traced, tmp_path / fmt, fmt, "int8")
    assert backend.manifest.precision == "int8" and backend.manifest.quantization["weights"].startswith("int8")
    if fmt == "onnx":
        nodes = onnx.load(str(tmp_path / fmt / "model.int8.onnx")).graph.node
        quantized = [n.name for n in nodes if n.op_type == "MatMulInteger"]
        # per block: the qkv projection and the MLP's two layers (the attention output Gemm is not
        # among ONNX Runtime's dynamically quantized ops)
        assert len(quantized) >= 3 * 3
        assert all("/resblocks." in n for n in quantized)  # the scoring head stays fp32
    text = det.class_text(CLASS)
    ref, out = det.method(pixels, text), backend(pixels, text)
    diff = (ref.scores - out.scores).abs().max().item()
    assert 0 < diff <= 0.25  # quantized: not bit-equal
    assert out.maps.shape == ref.maps.shape and torch.isfinite(out.maps).all()


def test_manifest_texts_and_identity_check(det, traced, tmp_path):
    folder = tmp_path / "onnx"
    backend = _export(det, traced, folder, "onnx", "fp32")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == "onnx" and m["opset"] == 18 and m["file"] == "model.onnx"
    ident = m["identity"]
    assert ident["method"] == "alfa" and ident["aligner"] == det.config.aligner
    assert ident["input_size"] == list(det.backbone.image_size) and ident["scales"] == [2, 3, 4, 5]
    assert ident["window_strides"] == [1, 2, 3, 3]
    assert ident["weights"]["visual"].startswith("blake2b:")
    assert {"alfa-ad", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    assert m["classes"][CLASS]["normal"] == list(det.prompts(CLASS).normal)
    normal, abnormal = backend.texts(CLASS)
    np.testing.assert_array_equal(normal, det.class_text(CLASS)[0].numpy())
    np.testing.assert_array_equal(abnormal, det.class_text(CLASS)[1].numpy())
    with pytest.raises(ValueError, match="not exported"):
        backend.texts("bottle")
    # another aligner, same weights: the export does not compute it
    other = Detector(det.backbone, cache_dir=None, llm_prompts=False, tile="none", aligner="value")
    with pytest.raises(ValueError, match="aligner"):
        create_backend("onnxruntime", other, folder)
    # other image-tower weights: the fingerprint differs
    fresh = Detector(weights="planted", device="cpu", cache_dir=None, llm_prompts=False, tile="none")
    with pytest.raises(ValueError, match="weights"):
        create_backend("onnxruntime", fresh, folder)


def test_backend_registry_and_errors(det, tmp_path):
    assert BACKENDS.names() == ("torch", "onnxruntime", "openvino")
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend("tensorrt", det)
    with pytest.raises(ValueError, match="not torch"):
        create_backend("torch", det, tmp_path)
    with pytest.raises(ValueError, match="no manifest.json"):
        OnnxRuntimeBackend(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "openvino"}))
    with pytest.raises(ValueError, match="not a valid export manifest"):
        OnnxRuntimeBackend(tmp_path)
    winclip = Detector(det.backbone, method="winclip", cache_dir=None, tile="none")
    with pytest.raises(ValueError, match="^--method winclip cannot be exported; exportable: alfa, patchknn"):
        create_backend("onnxruntime", winclip, tmp_path)


def test_exported_backend_refuses_a_memory_bank(det, traced, pixels, tmp_path):
    backend = _export(det, traced, tmp_path / "onnx", "onnx", "fp32")
    backend.method = SimpleNamespace(export_bank=lambda: [torch.zeros(1, 4)])  # a method with fitted references
    with pytest.raises(ValueError, match="memory bank"):
        backend(pixels, det.class_text(CLASS))


@pytest.mark.slow
def test_cli_export_then_run_gives_the_torch_scores(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=3)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    fast = ("--weights", "planted", "--no-llm")
    r = invoke("export", "--out", tmp_path / "exp", "--classes", "widget", *fast)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "exp" / "model.onnx").is_file() and (tmp_path / "exp" / "texts.npz").is_file()
    agreement = load_manifest(tmp_path / "exp").agreement  # checked on 8 generated images by default
    assert agreement["images"] == 8 and agreement["checked_on"] == "generated demo images"
    assert agreement["max_score_difference"] <= FP32_TOL  # (near-tied normal scores may swap ranks at 1e-7)
    assert "fp32 onnxruntime vs torch fp32: max |score difference|" in " ".join(r.output.split())
    rows = {}
    for backend in ("torch", "onnxruntime"):
        extra = ("--exported", tmp_path / "exp") if backend != "torch" else ()
        r = invoke("run", "--data", data, "--out", tmp_path / backend, "--no-overlays", "--backend", backend,
                   *extra, *fast)
        assert r.exit_code == 0, r.output
        rows[backend] = {row["path"]: row for row in csv.DictReader(open(tmp_path / backend / "scores.csv"))}
        record = json.loads((tmp_path / backend / "scores.json").read_text())
        assert record["config"]["backend"]["backend"] == backend
    assert rows["torch"].keys() == rows["onnxruntime"].keys() and len(rows["torch"]) == 5
    for path, row in rows["torch"].items():
        assert abs(float(row["score"]) - float(rows["onnxruntime"][path]["score"])) <= FP32_TOL
        assert row["kept_normal"] == rows["onnxruntime"][path]["kept_normal"]
    # one-line errors: unknown backend, few-shot, an export of other options
    for args, message in ((("--backend", "tensorrt"), "--backend must be one of"),
                          (("--backend", "onnxruntime", "--normals", data / "widget" / "test" / "good"), "few-shot"),
                          (("--backend", "onnxruntime", "--exported", tmp_path / "exp", "--aligner", "value"),
                           "aligner")):
        r = invoke("run", "--data", data, "--out", tmp_path / "bad", *fast, *args)
        assert r.exit_code == 2 and message in r.output, r.output


def test_agreement_measures_what_it_says(det, traced, pixels, tmp_path):
    """The export check: the fp32 export agrees, and a backend that is off (scores
    reversed, a map shifted) is reported as off (so the check can fail)."""
    from PIL import Image

    from alfa_ad.backends.agreement import check_images, measure_agreement
    from conftest import spot_image

    backend = _export(det, traced, tmp_path / "onnx", "onnx", "fp32")
    images = [Image.fromarray(spot_image(seed=i, box=(20 + 17 * i, 30 + 29 * i, 60 + 17 * i, 90 + 29 * i))[0])
              for i in range(5)]
    good = measure_agreement(det, backend, images, "spots", CLASS)
    assert good.images == 5 and good.max_score_difference <= FP32_TOL and good.max_map_difference <= FP32_TOL
    assert good.spearman == pytest.approx(1.0)

    def wrong(px, text):
        out = backend(px, text)
        return dataclasses.replace(out, scores=-out.scores, maps=torch.roll(out.maps, 7, dims=-1))

    bad = measure_agreement(det, wrong, images, "spots", CLASS)
    assert bad.spearman == pytest.approx(-1.0) and bad.max_score_difference > 0.1 and bad.max_map_difference > 0.01
    generated, source = check_images(None, 6)
    assert len(generated) == 6 and source == "generated demo images"
    (tmp_path / "two").mkdir()
    for i, im in enumerate(images[:2]):
        im.save(tmp_path / "two" / f"{i}.png")
    assert len(check_images(tmp_path / "two", 8)[0]) == 2


def test_cli_int8_export_records_its_agreement(tmp_path):
    runner = CliRunner()
    (tmp_path / "normals").mkdir()
    data = make_synthetic_dataset(tmp_path / "data", n_good=4, n_defect=0)
    fast = ("--weights", "planted", "--no-llm")
    r = runner.invoke(app, ["export", "--out", str(tmp_path / "q"), "--precision", "int8", "--check-data",
                            str(data / "widget" / "test" / "good"), "--check-images", "3", *fast])
    assert r.exit_code == 0, r.output
    agreement = load_manifest(tmp_path / "q").agreement
    assert agreement["images"] == 3 and agreement["checked_on"].endswith("good")
    assert 0 < agreement["max_score_difference"] < 1  # int8 moves scores, and says by how much
    r = runner.invoke(app, ["export", "--out", str(tmp_path / "n"), "--check-images", "0", *fast])
    assert r.exit_code == 0 and load_manifest(tmp_path / "n").agreement is None
    r = runner.invoke(app, ["export", "--out", str(tmp_path / "e"), "--check-data", str(tmp_path / "normals"), *fast])
    assert r.exit_code == 2 and "no images to check the export on" in r.output
