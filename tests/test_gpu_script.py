"""benchmarks/speed/gpu.py on the CPU with the planted model: the smoke run issue 27 asks for.

The script is what a session with a lent GPU runs once; this test keeps it working where no
GPU is: every requested row is produced, fp32 at batch size 1 agrees exactly with the CPU
reference, bf16 autocast agrees only approximately (the comparison can tell them apart), the
JSON file is strict JSON, and the time budget skips rows instead of overrunning.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(gpu_script, *extra):
    threads = torch.get_num_threads()
    try:
        return gpu_script.main(["--device", "cpu", "--weights", "planted", "--images", "4",
                                "--agree-images", "3", *extra])
    finally:
        torch.set_num_threads(threads)


def test_rows_speed_and_agreement(gpu_script, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    result = _run(gpu_script, "--methods", "alfa,winclip", "--aligners", "masked,none",
                  "--precisions", "fp32,bf16", "--batch-sizes", "1,2", "--json", str(out))
    rows = result["rows"]
    assert {(r["method"], r["aligner"], r["precision"], r["batch_size"]) for r in rows} == {
        (m, a, p, b) for m in ("alfa", "winclip") for a in ("masked", "none")
        for p in ("fp32", "bf16") for b in (1, 2)}
    assert not result["skipped"]
    for row in rows:
        assert row["images"] == 4 and row["batches"] == (4 if row["batch_size"] == 1 else 2)
        assert row["images_per_s"] > 0 and row["seconds"] > 0
        agree = row["agreement"]
        if row["precision"] == "fp32" and row["batch_size"] == 1:
            assert agree["max_score_difference"] == 0 and agree["max_map_difference"] == 0
        elif row["precision"] == "fp32":
            assert agree["max_score_difference"] < 1e-5 and agree["max_map_difference"] < 1e-5
        else:  # bf16 autocast: close, not equal; a comparison that saw no difference would be broken
            assert 0 < agree["max_map_difference"] < 0.1
    assert result["header"]["weights"] == "planted"
    saved = json.loads(out.read_text())  # strict JSON: NaN would not parse with this hook
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert len(saved["rows"]) == len(rows)
    printed = capsys.readouterr().out
    assert "speed and agreement only" in printed and "per batch" in printed


def test_budget_skips_rows(gpu_script):
    result = _run(gpu_script, "--methods", "alfa", "--aligners", "none", "--precisions", "fp32",
                  "--batch-sizes", "1,2", "--max-seconds", "0")
    assert result["rows"] == []
    assert [r["batch_size"] for r in result["skipped"]] == [1, 2]


def test_bad_precision_is_a_clear_error(gpu_script, capsys):
    with pytest.raises(SystemExit):
        _run(gpu_script, "--precisions", "fp8")
    assert "unknown precision 'fp8'" in capsys.readouterr().err
