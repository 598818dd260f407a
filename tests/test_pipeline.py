"""Streaming runs: background decode/write, --resume after an interruption, bounded state."""

from __future__ import annotations

import json
import threading
import time

import pytest
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.detector import Detector
from alfa_ad.outputs import resume as checkpoints
from alfa_ad.pipeline import BackgroundWriter, prefetch

FAST = ("--weights", "planted", "--no-llm", "--no-overlays", "--batch-size", "2")


def invoke(*args, catch=False):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch)


def test_prefetch_keeps_order_bounds_lookahead_and_hands_over_errors():
    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 3:
            raise ValueError("bad item")
        time.sleep(0.001 * (7 - i))
        return i * i

    seen = []
    for item, value, exc in prefetch(work, range(8), workers=3, lookahead=2):
        with lock:
            assert max(started) <= item + 2  # never more than `lookahead` ahead of the consumer
        seen.append((item, value, None if exc is None else str(exc)))
    assert seen == [(i, None if i == 3 else i * i, "bad item" if i == 3 else None) for i in range(8)]


def test_background_writer_runs_in_order_and_reraises():
    out = []
    w = BackgroundWriter(maxsize=2)
    for i in range(20):
        w.submit(out.append, i)
    w.flush()
    assert out == list(range(20))
    w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        w.flush()
    w.close()


@pytest.fixture
def data(tmp_path):
    return make_synthetic_dataset(tmp_path / "data", n_good=4, n_defect=5, seed=2)


def test_resume_after_an_interruption_gives_the_uninterrupted_result(data, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    assert invoke("run", "--data", data, "--out", clean, *FAST).exit_code == 0
    monkeypatch.setattr(checkpoints, "CHECKPOINT_EVERY", 2)
    calls = {"n": 0}
    original = Detector.predict

    def flaky(self, images, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the operator stops the run mid-class
        return original(self, images, *a, **k)

    monkeypatch.setattr(Detector, "predict", flaky)
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, *FAST, catch=True)
    assert result.exit_code != 0
    state = json.loads((out / ".resume" / "state.json").read_text())
    assert state["current"] == "widget" and state["rows"] == 6  # 3 batches of 2 scored and checkpointed
    rows_before = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows_before) == 6

    scored = []
    monkeypatch.setattr(Detector, "predict", lambda self, images, *a, **k: scored.extend(images) or
                        original(self, images, *a, **k))
    result = invoke("run", "--data", data, "--out", out, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    assert len(scored) == 9 - 6  # only what was not scored before
    assert "6 images were scored before the interruption" in result.output
    a, b = json.loads((clean / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert (clean / "scores.csv").read_text() == (out / "scores.csv").read_text()
    assert [r["path"] for r in json.loads((out / "scores.json").read_text())["images"]] == \
        [r["path"] for r in a["config"] and json.loads((clean / "scores.json").read_text())["images"]]


def test_resume_refuses_other_options_and_an_empty_folder(data, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--resume", *FAST)
    assert result.exit_code == 2 and "nothing to resume" in result.output
    assert invoke("run", "--data", data, "--out", out, *FAST).exit_code == 0
    again = invoke("run", "--data", data, "--out", out, "--resume", "--scales", "2", *FAST)
    assert again.exit_code == 2 and "other detector options" in again.output
