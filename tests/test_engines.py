"""Engines behind one consumer: dataset order whatever the completion order, the Ray
engine's stages in-process (no Ray needed), and the CLI's engine options."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.detector import Detector
from alfa_ad.engines import LostImagesError, Scored, describe_error, in_order
from alfa_ad.engines.local import LocalEngine
from alfa_ad.engines.scorer import BatchScorer, decode_batch
from alfa_ad.io.images import ImageLoadError, load_image
from alfa_ad.outputs.record import RunOptions, build_record
from alfa_ad.registry import ENGINES
from alfa_ad.runner import run_dataset


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def items(indices):
    return [Scored(i, None, None, f"e{i}") for i in indices]


def test_in_order_sorts_drops_duplicates_and_reports_lost_images():
    order = list(range(12))
    random.Random(3).shuffle(order)
    stats: dict[str, int] = {}
    out = [s.index for s in in_order(items(order + [order[0], 5]), 12, stats)]
    assert out == list(range(12))
    assert stats["duplicates"] == 2 and stats["max_waiting"] >= 1
    stats = {}
    assert [s.index for s in in_order(items(range(6)), 6, stats)] == list(range(6))
    assert stats["max_waiting"] == 0  # an engine that keeps the order leaves nothing waiting
    with pytest.raises(LostImagesError, match="no result for 2 of 5"):
        list(in_order(items([0, 2, 4]), 5))


def test_engines_are_registered_by_name():
    assert set(ENGINES.names()) == {"local", "ray"}
    assert ENGINES.get("local") is LocalEngine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "data", n_good=3, n_defect=4, seed=4)
    (root / "widget" / "test" / "good" / "zz_broken.png").write_bytes(b"not a png")
    return root


class ReversedEngine(LocalEngine):
    """The local engine's items, each class's in reverse order and one twice."""

    name = "reversed"

    def run(self, detector, jobs, explain=0):
        for job, stream in super().run(detector, jobs, explain):
            got = list(stream)
            yield job, iter(got[::-1] + got[:1])


def _run(detector, data: Path, out: Path, engine):
    from alfa_ad.io.datasets import discover

    dataset, _ = discover(data)
    options = RunOptions(data=str(data), engine=engine.name)
    record = build_record(detector, options, list(dataset), {c: detector.prompts(c).sources for c in dataset})
    return run_dataset(detector, dataset, out, record, options, overlays=False, engine=engine)


def test_consumer_writes_dataset_order_whatever_the_completion_order(data, tmp_path, planted_backbone):
    det = Detector(planted_backbone, weights="planted", llm_prompts=False, batch_size=2, cache_dir=None)
    a = _run(det, data, tmp_path / "a", LocalEngine(workers=2))
    b = _run(det, data, tmp_path / "b", ReversedEngine(workers=2))
    assert [r["path"] for r in a.rows] == [r["path"] for r in b.rows] == sorted(r["path"] for r in a.rows)
    assert [r["score"] for r in a.rows] == [r["score"] for r in b.rows]
    assert a.errors == b.errors and len(a.errors) == 1 and "zz_broken.png" in a.errors[0]
    assert a.metrics == b.metrics
    jsonl = [(tmp_path / x / "scores.jsonl").read_text() for x in "ab"]
    assert jsonl[0] == jsonl[1]
    assert json.loads((tmp_path / "b" / "scores.json").read_text())["config"]["engine"] == "reversed"


def test_decode_stage_reports_unreadable_files_as_the_local_engine(data):
    good = sorted((data / "widget" / "test" / "good").glob("0*.png"))[0]
    broken = data / "widget" / "test" / "good" / "zz_broken.png"
    out = decode_batch({"job": np.array([0, 0]), "index": np.array([0, 1]), "path": np.array([str(good), str(broken)])})
    im = load_image(good)
    assert out["pixels"][0] == im.tobytes() and (out["width"][0], out["height"][0]) == im.size
    with pytest.raises(ImageLoadError) as exc:
        load_image(broken)
    assert out["error"][1] == describe_error(broken, exc.value) == str(exc.value) and out["error"][0] == ""


def test_scorer_builds_once_from_config_and_driver_state_and_never_encodes_text(data, tmp_path):
    det = Detector(weights="planted", batch_size=2, cache_dir=None, llm_prompts=True)
    det.set_prompt_class("widget", "bottle")  # LLM prompts and descriptions for --explain
    refs = sorted((data / "widget" / "test" / "good").glob("0*.png"))
    det.fit_normals(refs)
    det.calibrate(None, "widget", 0.1)
    paths = sorted((data / "widget" / "test" / "spot").glob("*.png"))[:3]
    expected = det.predict(paths, "widget", explain=2)
    scorer = BatchScorer(det.config.as_dict(), {0: ("widget", det.export_class_state("widget", explain=True))}, explain=2)
    assert scorer.detector is not det and scorer.detector.sources == []
    batch = decode_batch({"job": np.zeros(3, int), "index": np.arange(3), "path": np.array([str(p) for p in paths])})
    for _ in range(2):  # per batch only predict runs: no text encoding, no fitting
        got = [pickle.loads(b) for b in scorer(batch)["result"]]
        for e, g in zip(expected, got):
            assert abs(e.score - g.score) <= 1e-6 and np.allclose(e.anomaly_map, g.anomaly_map, atol=1e-6)
            assert e.decision == g.decision and e.kept_prompts == g.kept_prompts
            assert [d.text for d in e.descriptors] == [d.text for d in g.descriptors] and g.descriptors
    scorer.detector.forget_class_text()  # as if the driver had not sent the class's embeddings
    with pytest.raises(RuntimeError, match="asked to encode"):
        scorer(batch)


def test_cli_engine_options_are_checked_before_the_model_loads(data, tmp_path, monkeypatch):
    result = invoke("run", "--data", data, "--weights", "planted", "--engine", "spark", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--engine must be one of local, ray" in result.output
    result = invoke("run", "--data", data, "--weights", "planted", "--gpus-per-worker", "1", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--gpus-per-worker does not apply to --engine local" in result.output
    import alfa_ad.engines.ray_data as ray_data

    monkeypatch.setattr(ray_data, "ray_available", lambda: False)
    result = invoke("run", "--data", data, "--weights", "planted", "--engine", "ray", "--out", tmp_path / "o")
    assert result.exit_code == 2 and 'pip install "alfa-ad[ray]"' in result.output
