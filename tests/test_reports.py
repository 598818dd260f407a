"""Run reports and data layouts: VisA split files, metric files and their configuration,
warnings about masks, prompt sources and explanations, seed summaries, and the
``generate-prompts`` command against the local fake OpenAI server."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alfa_ad import __version__
from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.io.datasets import discover, train_images
from alfa_ad.io.images import InputError
from alfa_ad.prompting.library import load_library, new_library, save_library
from alfa_ad.outputs.tables import METRIC_TITLES, METRICS, aggregate_seeds

from conftest import grey_texture, spot_image
from llm_server import FakeLLMServer, status

runner = CliRunner()
FAST = ("--weights", "planted", "--no-llm", "--no-overlays")
TITLES = ["img AUROC", "img AUPR", "img F1-max", "px AUROC", "PRO", "px F1-max"]


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# =========================================================================== VisA layout
VISA_HEADER = "object,split,label,image,mask\n"


@pytest.fixture(scope="module")
def visa_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("visa")
    base = root / "candle" / "Data"
    rows = []
    for i in range(4):  # train split: normal only
        rel = f"candle/Data/Images/Normal/1{i:02d}.JPG"
        _save_jpg(root / rel, grey_texture(240, 320, seed=50 + i))
        rows.append(f"candle,train,normal,{rel},")
    for i, box in [(0, None), (1, (30, 220, 80, 290)), (2, None), (3, (150, 30, 200, 90))]:
        if box is None:
            rel = f"candle/Data/Images/Normal/{i:03d}.JPG"
            _save_jpg(root / rel, grey_texture(240, 320, seed=i))
            rows.append(f"candle,test,normal,{rel},")
        else:
            rel = f"candle/Data/Images/Anomaly/{i:03d}.JPG"
            img, mask = spot_image(240, 320, box, seed=i)
            _save_jpg(root / rel, img)
            mrel = f"candle/Data/Masks/Anomaly/{i:03d}.png"
            (root / mrel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / mrel)
            rows.append(f"candle,test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text(VISA_HEADER + "\n".join(rows) + "\n")
    assert base.is_dir()
    return root


def _save_jpg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def test_visa_discover_and_train_images(visa_root):
    dataset, warnings = discover(visa_root)
    assert warnings == [] and list(dataset) == ["candle"]
    samples = dataset["candle"]
    assert [s.path.name for s in samples] == ["000.JPG", "001.JPG", "002.JPG", "003.JPG"]
    assert [s.label for s in samples] == [0, 1, 0, 1]
    assert [s.defect_type for s in samples] == ["good", "anomaly", "good", "anomaly"]
    assert samples[0].mask_path is None
    assert samples[1].mask_path == visa_root / "candle/Data/Masks/Anomaly/001.png"
    assert all(s.class_name == "candle" and s.path.is_file() for s in samples)
    assert discover(visa_root, ["candle"])[0].keys() == {"candle"}
    train = train_images(visa_root, "candle")
    assert train == [visa_root / f"candle/Data/Images/Normal/1{i:02d}.JPG" for i in range(4)]
    assert not set(train) & {s.path for s in samples}


def test_visa_run_few_shot(visa_root, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--data", visa_root, "--out", out, "--shots", 1, *FAST)
    assert result.exit_code == 0, result.output
    m = _json(out / "metrics.json")
    assert m["n_images"] == 4 and m["n_errors"] == 0
    refs = m["classes"]["candle"]["references"]
    assert len(refs) == 1 and Path(refs[0]) in train_images(visa_root, "candle")
    assert m["metrics"]["candle"]["image_auroc"] == 1.0
    assert m["metrics"]["candle"]["pixel_auroc"] >= 0.9


def test_visa_unknown_class_is_a_usage_error(visa_root, tmp_path):
    result = invoke("run", "--data", visa_root, "--out", tmp_path / "out", "--classes", "nosuch", *FAST)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and "nosuch" in lines[0] and "available: candle" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [
    b"foo,bar\n1,2\n",  # wrong columns
    VISA_HEADER.encode(),  # header only
    b"\xff\xfe\x00\x81 not text \x00\xff\n",  # binary garbage
])
def test_visa_malformed_split_file(tmp_path, content):
    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    split = root / "split_csv" / "1cls.csv"
    split.write_bytes(content)
    with pytest.raises(InputError, match="1cls.csv"):
        discover(root)
    result = invoke("run", "--data", root, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and str(split) in lines[0], result.output


def test_visa_short_row_is_reported_not_crashed(tmp_path):
    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    split = root / "split_csv" / "1cls.csv"
    split.write_text(VISA_HEADER + "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG\n")
    with pytest.raises(InputError, match="1cls.csv"):
        discover(root)


def test_visa_labels_splits_and_fields_are_read_strictly(visa_root, tmp_path):
    """`Test` is the test split; fields are stripped; an empty or unknown label is reported
    and skipped, never counted as anomalous."""
    root = tmp_path / "visa2"
    import shutil

    shutil.copytree(visa_root, root)
    rows = (root / "split_csv" / "1cls.csv").read_text().splitlines()[1:]
    edited = []
    for r in rows:
        obj, split, label, image, mask = r.split(",")
        if image.endswith("000.JPG"):
            split, image = "Test", f"  {image} "
        if image.endswith("002.JPG"):
            label = ""
        edited.append(",".join([obj, split, label, image, mask]))
    edited.append("candle,test,weird,candle/Data/Images/Normal/000.JPG,")
    (root / "split_csv" / "1cls.csv").write_text(VISA_HEADER + "\n".join(edited) + "\n")
    dataset, warnings = discover(root)
    names = [s.path.name for s in dataset["candle"]]
    assert names == ["000.JPG", "001.JPG", "003.JPG"]  # 002 (empty label) and the 'weird' row skipped
    assert [s.label for s in dataset["candle"]] == [0, 1, 1]
    assert dataset["candle"][0].path == root / "candle/Data/Images/Normal/000.JPG"
    assert len(warnings) == 2 and all("row skipped" in w for w in warnings)
    assert "''" in warnings[0] and "'weird'" in warnings[1]


def test_mvtec_classes_on_a_root_without_them(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    result = invoke("run", "--data", data, "--out", tmp_path / "out", "--classes", "mvtec", *FAST)
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and "missing class folder" in lines[0]
    assert "bottle" in lines[0] and "available: widget" in lines[0]


# =========================================================================== metric files
@pytest.fixture(scope="module")
def two_class_run(tmp_path_factory):
    """widget (2 good + 3 spots) and 'onlygood' (good images only), zero-shot."""
    base = tmp_path_factory.mktemp("report")
    data = make_synthetic_dataset(base / "data", n_good=2, n_defect=3, seed=0)
    shutil.copytree(data / "widget" / "test" / "good", data / "onlygood" / "test" / "good")
    out = base / "out"
    result = invoke("run", "--data", data, "--out", out, "--seed", 5, *FAST)
    assert result.exit_code == 0, result.output
    return data, out, result


def test_metric_files_have_every_metric_and_the_config(two_class_run):
    data, out, result = two_class_run
    m = _json(out / "metrics.json")
    assert set(m["metrics"]) == {"widget", "onlygood"}
    for cls in m["metrics"]:
        assert set(m["metrics"][cls]) >= set(METRICS)
    assert m["metrics"]["widget"]["image_auroc"] == 1.0 and m["metrics"]["widget"]["pixel_auroc"] >= 0.95
    cfg = m["config"]
    assert cfg["method"] == "alfa" and cfg["shots"] == "0"
    assert "planted" in cfg["weights"] and m["weights"] == cfg["weights"]
    assert cfg["model"] == "planted-vit" and cfg["weights_source"]["source"] == "planted"
    assert cfg["scales"] == [2, 3, 4, 5] and cfg["window_strides"] == [1, 2, 3, 3]
    assert cfg["prompt_sources"] == ["template"]
    assert cfg["version"] == __version__ == m["alfa_ad_version"]
    assert cfg["data"] == str(data)
    # only what applies to this run: zero-shot, planted weights, not calibrated
    for absent in ("seed", "coreset", "pretrained", "normals", "calibration", "fpr", "references", "weights_file"):
        assert absent not in cfg, absent
    assert m["classes"]["widget"]["prompt_sources"] == {"template": 144}

    table = list(csv.reader(open(out / "metrics.csv", newline="")))
    assert table[0] == ["class", *TITLES] and [METRIC_TITLES[k] for k in METRICS] == TITLES
    assert [r[0] for r in table[1:]] == ["onlygood", "widget", "mean"]
    widget = dict(zip(table[0], table[2]))
    assert widget["img AUROC"] == "100.0" and float(widget["px AUROC"]) >= 95

    md = (out / "metrics.md").read_text()
    for title in TITLES:
        assert title in md
    for fragment in ("method: alfa", f"version: {__version__}", "scales: 2, 3", "prompt_sources: template",
                     "planted", "model: planted-vit"):
        assert fragment in md, fragment
    assert "| widget | 100.0 |" in md


def test_class_with_only_good_images_is_undefined(two_class_run):
    _, out, result = two_class_run
    m = _json(out / "metrics.json")
    only = m["metrics"]["onlygood"]
    assert only["image_auroc"] is None and only["image_aupr"] is None and only["pixel_auroc"] is None
    assert m["mean"]["image_auroc"] == m["metrics"]["widget"]["image_auroc"]  # mean over defined classes
    table = list(csv.reader(open(out / "metrics.csv", newline="")))
    assert table[1][0] == "onlygood" and table[1][1:] == ["undefined"] * 6
    assert "undefined" in (out / "metrics.md").read_text()
    assert "undefined" in result.output


def test_config_reproduces_the_run(two_class_run, tmp_path):
    data, out, _ = two_class_run
    cfg = _json(out / "metrics.json")["config"]
    again = tmp_path / "again"
    result = invoke("run", "--data", cfg["data"], "--out", again, "--method", cfg["method"], "--shots", cfg["shots"],
                    "--scales", ",".join(map(str, cfg["scales"])),
                    "--window-strides", ",".join(map(str, cfg["window_strides"])), "--tile", cfg["tile"], *FAST)
    assert result.exit_code == 0, result.output
    assert (again / "scores.csv").read_bytes() == (out / "scores.csv").read_bytes()
    # and the record's detector entry rebuilds the same detector in Python
    from alfa_ad import Detector

    det = Detector.from_config(cfg["detector"], cache_dir=None)
    assert det.config.as_dict() == cfg["detector"]
    rows = _json(out / "scores.json")["images"]
    r = det(rows[0]["path"], rows[0]["class"])
    assert r.score == pytest.approx(rows[0]["score"], abs=1e-6)


def test_mask_problems_are_warnings_and_images_still_count(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=3)
    gt = data / "widget" / "ground_truth" / "spot"
    bad_mask = gt / "000_mask.png"
    Image.new("L", (100, 50), 255).save(bad_mask)  # the image is 320x240
    (gt / "001_mask.png").unlink()
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    scores = _json(out / "scores.json")
    warnings = scores["warnings"]
    size = [w for w in warnings if str(bad_mask) in w]
    assert len(size) == 1 and "100x50" in size[0] and "320x240" in size[0] and "image metrics only" in size[0]
    missing = [w for w in warnings if "001.png" in w]
    assert len(missing) == 1 and "without mask" in missing[0]
    assert len(scores["images"]) == 4 and scores["errors"] == []
    assert sorted(r["label"] for r in scores["images"]) == [0, 0, 1, 1]
    m = _json(out / "metrics.json")["metrics"]["widget"]
    assert m["image_auroc"] == 1.0  # both defect images count for the image metrics ...
    assert m["pixel_auroc"] is None  # ... but give no ground truth for the pixel metrics
    assert str(bad_mask) in result.output and "warning:" in result.output


# =========================================================================== prompt sources
DESCRIPTORS = ["a red spot on the surface", "a dark stain", "a scratch", "a smooth and uniform surface",
               "a clean flawless finish"]


def _library(path: Path, classes=("widget",)) -> Path:
    lib = new_library()
    for c in classes:
        lib["classes"][c] = {
            "normal": [f"A normal image of {c} with a smooth surface.", f"A normal image of {c}, flawless.",
                       f"A normal image of {c} with intact edges."],
            "abnormal": [f"An abnormal image of {c} with a red spot.", f"An abnormal image of {c} with a crack.",
                         f"An abnormal image of {c} with a stain.", f"An abnormal image of {c} with a scratch."],
            "descriptors": list(DESCRIPTORS),
        }
    save_library(path, lib)
    return path


def _json_lib(path: Path, cls: str = "widget") -> dict:
    return _json(path)["classes"][cls]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("prompts") / "data", n_good=2, n_defect=2, seed=4)


def test_prompt_library_sources_and_explanations(small_data, tmp_path):
    lib = _library(tmp_path / "lib.json")
    out = tmp_path / "out"
    result = invoke("run", "--data", small_data, "--out", out, "--weights", "planted", "--no-overlays",
                    "--prompts", lib, "--explain", 3)
    assert result.exit_code == 0, result.output
    m = _json(out / "metrics.json")
    facts = m["classes"]["widget"]
    assert facts["prompt_sources"] == {"template": 144, "llm": 7}
    assert m["config"]["prompt_sources"] == ["template", "llm"] and m["config"]["prompts_file"] == str(lib)
    assert m["config"]["explain"] == 3
    kept = facts["mean_prompts_kept"]
    assert 0 < kept["normal"] <= 72 + 3 and 0 < kept["abnormal"] <= 72 + 4
    assert "prompts kept per image on average" in result.output
    rows = _json(out / "scores.json")["images"]
    assert len(rows) == 4
    candidates = set(DESCRIPTORS) | set(_json_lib(lib)["normal"]) | set(_json_lib(lib)["abnormal"])
    for row in rows:
        desc = row["descriptors"]
        assert len(desc) == 3 and all(set(d) == {"text", "side", "source", "similarity"} for d in desc)
        assert all(d["text"] in candidates for d in desc) and len({d["text"] for d in desc}) == 3
        for d in desc:
            assert d["side"] == ("normal" if d["text"] in _json_lib(lib)["normal"] else "abnormal")
            assert d["source"] == ("llm-descriptor" if d["text"] in DESCRIPTORS else "llm")
        sims = [d["similarity"] for d in desc]
        assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
        assert row["total_normal"] == 72 + 3 and row["total_abnormal"] == 72 + 4
        assert 0 < row["kept_normal"] <= 72 + 3
    assert not any("templates only" in w for w in _json(out / "scores.json")["warnings"])


def test_library_without_the_class_warns_templates_only(small_data, tmp_path):
    lib = _library(tmp_path / "lib.json", classes=("gadget",))
    out = tmp_path / "out"
    result = invoke("run", "--data", small_data, "--out", out, "--weights", "planted", "--no-overlays",
                    "--prompts", lib, "--explain", 2)
    assert result.exit_code == 0, result.output
    warnings = _json(out / "scores.json")["warnings"]
    assert any("widget" in w and "templates only" in w for w in warnings), warnings
    assert "templates only" in result.output
    assert _json(out / "metrics.json")["classes"]["widget"]["prompt_sources"] == {"template": 144}
    assert all("descriptors" not in r for r in _json(out / "scores.json")["images"])  # nothing to explain


# =========================================================================== seed aggregation
def test_aggregate_seeds_mean_and_population_std(tmp_path):
    def report(values):
        return {"a": {k: v for k, v in zip(METRICS, values)}, "b": {k: 0.5 for k in METRICS}}

    reports = [report([0.6, 0.5, None, 0.9, 0.8, 0.7]), report([0.8, 0.7, None, 0.7, 0.8, 0.7])]
    summary = aggregate_seeds(reports)
    assert list(summary) == ["a", "b", "mean"]
    a = summary["a"]
    assert a["image_auroc"]["mean"] == pytest.approx(0.7) and a["image_auroc"]["std"] == pytest.approx(0.1)
    assert a["image_auroc"]["n"] == 2
    assert a["image_f1_max"] == {"mean": None, "std": None, "n": 0}  # undefined in every seed
    assert summary["b"]["pro"]["std"] == 0.0
    assert summary["mean"]["image_auroc"]["mean"] == pytest.approx((0.55 + 0.65) / 2)


# =========================================================================== generate-prompts
KEY = "sk-test-REPORTS-SECRET-42"


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_generate_prompts_cli_writes_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out, cache = tmp_path / "lib.json", tmp_path / "cache"
    with FakeLLMServer() as server:
        args = ("generate-prompts", "--classes", "widget,gadget", "--base-url", server.base_url, "--model", "fake",
                "--out", out, "--cache-dir", cache, "--retries", 0)
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        lib = load_library(out)
        assert set(lib["classes"]) == {"widget", "gadget"}
        for name, entry in lib["classes"].items():
            assert entry["normal"] and entry["abnormal"] and entry["descriptors"]
            assert entry["model"] == "fake"
            assert all(name in p for p in entry["normal"])
        first = server.count
        assert first > 0
        auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in server.requests]
        assert auth == [f"Bearer {KEY}"] * first  # the key from the environment was sent
        assert "2 of 2 classes" in result.output

        again = invoke(*args)  # identical run: everything is already there
        assert again.exit_code == 0, again.output
        assert server.count == first
        assert load_library(out) == lib

        other = tmp_path / "other.json"  # a new library file from the same reply cache
        fresh = invoke(*[other if a == out else a for a in args])
        assert fresh.exit_code == 0, fresh.output
        assert server.count == first
        assert load_library(other)["classes"]["widget"]["abnormal"] == lib["classes"]["widget"]["abnormal"]
    for text in (result.output, again.output, fresh.output):
        assert KEY not in text
    assert KEY.encode() not in out.read_bytes() and KEY.encode() not in other.read_bytes()
    assert KEY.encode() not in _all_bytes(cache) and any(cache.rglob("*"))


def test_generate_prompts_cli_server_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out, cache = tmp_path / "lib.json", tmp_path / "cache"
    with FakeLLMServer() as server:
        server.default = status(503)
        result = invoke("generate-prompts", "--classes", "widget,gadget", "--base-url", server.base_url,
                        "--model", "fake", "--out", out, "--cache-dir", cache, "--retries", 0)
        assert server.count >= 2
    assert result.exit_code == 1, result.output
    failed = [ln for ln in result.output.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 2, result.output
    for name, line in zip(("widget", "gadget"), failed):
        assert f"class {name!r}" in line and "503" in line
    assert "no library written" in result.output and "all 2 classes failed" in result.output
    assert not out.exists()
    assert KEY not in result.output
    assert not out.exists() or KEY.encode() not in out.read_bytes()
    if cache.exists():
        assert KEY.encode() not in _all_bytes(cache)


def test_explain_similarities_are_cosines_to_the_image_embedding(planted_backbone, tmp_path):
    import torch.nn.functional as F

    from alfa_ad import Detector
    from alfa_ad.io.images import load_image

    det = Detector(planted_backbone, cache_dir=None, prompts=_library(tmp_path / "lib.json"))
    img, _ = spot_image(200, 320, seed=2)
    candidates = det.descriptors("widget")
    assert len(candidates) == len(DESCRIPTORS) + 7 and candidates[: len(DESCRIPTORS)] == DESCRIPTORS
    r = det(img, "widget", explain=len(candidates))
    assert sorted(d.text for d in r.descriptors) == sorted(candidates)
    bb = planted_backbone
    g, _ = bb.global_embedding(bb.penultimate(bb.tokens(bb.preprocess([load_image(img)]))))
    text = F.normalize(bb.encode_text(candidates), dim=-1)
    expected = dict(zip(candidates, (text @ F.normalize(g[0], dim=-1)).tolist()))
    for d in r.descriptors:
        assert d.similarity == pytest.approx(expected[d.text], abs=1e-5)
    assert [d.similarity for d in r.descriptors] == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-5)
    assert len(det(img, "widget", explain=5).descriptors) == 5  # exactly N when N exist
    assert det(img, "widget").descriptors == []  # explain=0: none


def test_rerun_without_labels_removes_stale_metrics(tmp_path):
    """Reusing an output folder: metrics of an earlier labelled run must not survive a run
    that has nothing to measure (they would describe other scores)."""
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=2)
    out = tmp_path / "out"
    assert invoke("run", "--data", data, "--out", out, *FAST).exit_code == 0
    assert (out / "metrics.json").is_file() and (out / "metrics.md").is_file()
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.fromarray(grey_texture(64, 64, 0)).save(plain / "a.png")
    result = invoke("run", "--data", plain, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert not any((out / n).exists() for n in ("metrics.json", "metrics.csv", "metrics.md"))
    rows = json.loads((out / "scores.json").read_text())["images"]
    assert [Path(r["path"]).name for r in rows] == ["a.png"]


def test_duplicate_seeds_run_once(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--seeds", "0,0", "--shots", "1",
                    "--normals", data / "widget" / "test" / "good", *FAST)
    assert result.exit_code == 0, result.output
    assert result.output.count("--- seed") == 0  # one distinct seed: a single plain run
    assert (out / "scores.csv").is_file() and not (out / "seed_0").exists()
