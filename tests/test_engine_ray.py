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

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason='Ray Data not installed (pip install -e ".[ray]")')
pytest.importorskip("ray.data", reason='Ray Data not installed (pip install -e ".[ray]")')

from alfa_ad.cli import app  # noqa: E402
from alfa_ad.demo import make_synthetic_dataset  # noqa: E402
from alfa_ad.engines.ray_data import RayEngine  # noqa: E402
from alfa_ad.engines.scorer import CRASH_ONCE_ENV  # noqa: E402

pytestmark = pytest.mark.slow
FAST = ("--weights", "planted", "--batch-size", "2", "--prompt-class", "bottle")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


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
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == len(set(r["path"] for r in a))
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
