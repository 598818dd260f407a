"""``--engine ray`` on a local 2-CPU Ray instance: the same outputs as the local engine,
and a scoring actor that dies mid-run is restarted with no image lost or written twice.

Skipped when Ray Data is not installed (``pip install -e ".[ray]"``).  One Ray instance,
started by the engine itself, serves the module (start-up is most of the time here).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason='Ray Data not installed (pip install -e ".[ray]")')
pytest.importorskip("ray.data", reason='Ray Data not installed (pip install -e ".[ray]")')

from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.detector import Detector
from alfa_ad.engines.ray_data import RayEngine
from alfa_ad.engines.scorer import CRASH_ONCE_ENV
from alfa_ad.outputs import resume as checkpoints

pytestmark = pytest.mark.slow
FAST = ("--weights", "planted", "--batch-size", "2", "--prompt-class", "bottle")


def invoke(*args, catch=False):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch)


@pytest.fixture(scope="module")
def crash_marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crash") / "crash-once"


@pytest.fixture(scope="module")
def ray_instance(crash_marker):
    """A local Ray instance as ``--engine ray`` starts it, with the fault-injection
    variable in its environment (inert until a test creates the marker file)."""
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CRASH_ONCE_ENV, str(crash_marker))
        engine = RayEngine()
        engine.open()
        assert engine.started and ray.cluster_resources()["CPU"] == (os.cpu_count() or 1)
        yield engine
        engine.close()
    assert not ray.is_initialized()  # the instance the engine started is shut down


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    make_synthetic_dataset(root / "refs", n_good=3, n_defect=0, seed=7)
    data = make_synthetic_dataset(root / "data", n_good=3, n_defect=5, seed=3)
    (data / "widget" / "test" / "good" / "zz_broken.png").write_bytes(b"not a png")
    return data


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def assert_same_outputs(local: Path, remote: Path) -> None:
    a, b = rows(local), rows(remote)
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == len({r["path"] for r in a})
    for x, y in zip(a, b):
        for key in ("score", "global_score", "map_max"):
            assert abs(x[key] - y[key]) <= 1e-5, (x["path"], key)
        assert {k: v for k, v in x.items() if k not in ("score", "global_score", "map_max", "descriptors")} == \
            {k: v for k, v in y.items() if k not in ("score", "global_score", "map_max", "descriptors")}
        assert [d["text"] for d in x.get("descriptors", [])] == [d["text"] for d in y.get("descriptors", [])]
    ja, jb = (json.loads((p / "scores.json").read_text()) for p in (local, remote))
    assert ja["errors"] == jb["errors"] and len(ja["errors"]) == 1 and "zz_broken.png" in ja["errors"][0]
    assert (ja["config"]["engine"], jb["config"]["engine"]) == ("local", "ray")
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (local, remote))
    for cls, metrics in ma["metrics"].items():
        for key, value in metrics.items():
            assert value == pytest.approx(mb["metrics"][cls][key], abs=1e-4), (cls, key)
    assert ma["classes"]["widget"].get("thresholds") == mb["classes"]["widget"].get("thresholds")
    assert ma["classes"]["widget"].get("decisions") == mb["classes"]["widget"].get("decisions")
    for folder in ("masks", "overlays"):
        files = [sorted(str(f.relative_to(p / folder)) for f in (p / folder).rglob("*.png")) for p in (local, remote)]
        assert files[0] == files[1]
        for name in files[0]:  # same pictures: a colour level may flip where maps differ by ~1e-7
            x, y = (np.asarray(Image.open(p / folder / name), dtype=np.int16) for p in (local, remote))
            assert x.shape == y.shape and np.mean(np.abs(x - y) > 1) < 1e-3, (folder, name)
    assert (local / "report.html").is_file() == (remote / "report.html").is_file()
    with open(remote / "scores.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(b)


def test_ray_engine_gives_the_local_outputs(ray_instance, data, tmp_path):
    """Few-shot with leave-one-out thresholds, --explain, an unreadable image, overlays."""
    refs = data.parent / "refs" / "widget" / "test" / "good"
    common = ("--data", data, "--normals", refs, "--explain", "2", *FAST)
    assert invoke("run", *common, "--out", tmp_path / "local").exit_code == 0
    result = invoke("run", *common, "--engine", "ray", "--workers", "1", "--out", tmp_path / "ray")
    assert result.exit_code == 0, result.output
    assert ray.is_initialized()  # it joined the running instance: not its to shut down
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")
    assert any((tmp_path / "ray" / "masks").rglob("*.png"))  # calibrated decisions were exercised


def test_a_worker_that_dies_is_retried_and_no_image_is_lost_or_doubled(ray_instance, crash_marker, data, tmp_path):
    common = ("--data", data, "--method", "winclip", *FAST, "--no-overlays")
    assert invoke("run", *common, "--out", tmp_path / "local").exit_code == 0
    crash_marker.write_text("armed")  # the first scoring actor to start a batch exits its process
    result = invoke("run", *common, "--engine", "ray", "--out", tmp_path / "ray")
    assert result.exit_code == 0, result.output
    assert not crash_marker.exists() and Path(f"{crash_marker}.fired").exists()  # it did die
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")


def test_resume_on_ray_after_a_local_interruption_gives_the_uninterrupted_result(ray_instance, data, tmp_path,
                                                                                  monkeypatch):
    """--resume with --engine ray continues from the local run's checkpoint: only the images
    not scored before go to Ray, and the files equal an uninterrupted run's."""
    fast = ("--data", data, "--weights", "planted", "--no-llm", "--no-overlays", "--batch-size", "2")
    clean = tmp_path / "clean"
    assert invoke("run", *fast, "--out", clean).exit_code == 0
    monkeypatch.setattr(checkpoints, "CHECKPOINT_EVERY", 2)
    calls, original = {"n": 0}, Detector.predict

    def flaky(self, images, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the operator stops the run mid-class
        return original(self, images, *a, **k)

    monkeypatch.setattr(Detector, "predict", flaky)
    out = tmp_path / "out"
    assert invoke("run", *fast, "--out", out, catch=True).exit_code != 0
    monkeypatch.setattr(Detector, "predict", original)
    before = len((out / "scores.jsonl").read_text().splitlines())
    assert 0 < before < 8
    result = invoke("run", *fast, "--out", out, "--resume", "--engine", "ray", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"{before} images were scored before the interruption" in result.output
    x, y = rows(clean), rows(out)
    assert [r["path"] for r in x] == [r["path"] for r in y] and len(y) == 8  # none lost, none twice
    for r, s in zip(x, y):
        assert abs(r["score"] - s["score"]) <= 1e-5 and r["label"] == s["label"]
    errors = [json.loads((p / "scores.json").read_text())["errors"] for p in (clean, out)]
    assert errors[0] == errors[1] and len(errors[0]) == 1  # the unreadable image, reported once
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (clean, out))
    for cls, metrics in a["metrics"].items():
        for key, value in metrics.items():
            assert value == pytest.approx(b["metrics"][cls][key], abs=1e-6), (cls, key)
