"""report.html from a run folder's files: written by every run, rebuilt by ``alfa-ad report``,
old run folders included (no browser here: see test_report_browser.py)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.report import load_run, write_report
from alfa_ad.report.runfiles import METRIC_COLUMNS
from alfa_ad.outputs.tables import METRIC_TITLES, METRICS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def gallery_data(page: Path) -> dict:
    html = page.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', html, re.DOTALL)
    assert m, "no gallery data in the page"
    return json.loads(m.group(1))


def local_refs(page: Path) -> list[str]:
    """Every relative src/href in the page's static HTML and its gallery data."""
    html = page.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"#:][^":]*)"', html)
    for item in gallery_data(page)["items"]:
        refs += [item[k] for k in ("img", "thumb", "mask") if item[k]]
    return refs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = make_synthetic_dataset(root / "data")  # 4 good + 6 spot images of "widget"
    out = root / "out"
    result = invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm")
    assert result.exit_code == 0, result.output
    return out


def test_metric_columns_match_the_runner():
    assert [k for k, _ in METRIC_COLUMNS] == list(METRICS)
    assert [t for _, t in METRIC_COLUMNS] == [METRIC_TITLES[m] for m in METRICS]


def test_every_run_writes_a_report(run_dir):
    page = run_dir / "report.html"
    html = page.read_text(encoding="utf-8")
    assert 'id="weights-banner"' in html and "planted weights" in html
    assert "px AUROC" in html and "widget" in html
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    items = gallery_data(page)["items"]
    assert len(items) == 10
    assert sorted(i["type"] for i in items) == ["good"] * 4 + ["spot"] * 6
    for ref in local_refs(page):
        assert (run_dir / ref).is_file(), ref
    assert all(i["thumb"].startswith("report_files/thumbs/") for i in items)
    assert all(len(i["kp"]) == 2 and i["kp"][1] for i in items)  # kept prompts, by index into the class's list
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 1  # one figure for the one class


def test_misclassified_come_first(run_dir):
    items = gallery_data(run_dir / "report.html")["items"]
    outcomes = [i["outcome"] for i in items]
    wrong = [o in ("FN", "FP") for o in outcomes]
    assert wrong == sorted(wrong, reverse=True)  # all misclassified before all correct ones
    assert set(outcomes) <= {"TP", "TN", "FN", "FP"} and all(outcomes)


def test_report_rebuilds_from_files_only(run_dir, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "report_files")
    result = invoke("report", copy)
    assert result.exit_code == 0, result.output
    assert (copy / "report.html").is_file() and "report.html" in result.output
    original, rebuilt = gallery_data(run_dir / "report.html"), gallery_data(copy / "report.html")
    assert [i["key"] for i in rebuilt["items"]] == [i["key"] for i in original["items"]]
    for ref in local_refs(copy / "report.html"):
        assert (copy / ref).is_file(), ref


def test_report_needs_no_data_folder(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=3)
    out = tmp_path / "out"
    assert invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm").exit_code == 0
    shutil.rmtree(data)
    (out / "report.html").unlink()
    assert invoke("report", out).exit_code == 0
    assert len(gallery_data(out / "report.html")["items"]) == 4


def _old_run(folder: Path, csv_only: bool = False) -> Path:
    """A run folder as version 0.1.0 wrote it: no key, no kept prompt texts, no class_stats."""
    (folder / "overlays" / "gear" / "images").mkdir(parents=True)
    from PIL import Image

    rows = []
    for i, name in enumerate(["a.png", "b.png", "<img src=x onerror=alert(1)>.png"]):
        Image.new("RGB", (40, 20), (i * 80, 0, 0)).save(folder / "overlays" / "gear" / "images" / name)
        rows.append({"class": "gear", "path": f"/gone/{name}", "defect_type": "", "label": "", "score": 0.1 * i,
                     "decision": "", "global_score": 0.1, "map_max": 0.2, "kept_normal": 3, "kept_abnormal": 2,
                     "total_normal": 4, "total_abnormal": 4, "method": "alfa", "weights": "random weights (x)"})
    rows[0]["descriptors"] = [["a dent", 0.31], ["a scratch", 0.2]]
    if csv_only:
        with open(folder / "scores.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[1]))
            w.writeheader()
            w.writerows(rows[1:])
    else:
        (folder / "scores.json").write_text(json.dumps({"alfa_ad_version": "0.1.0", "weights": "random weights (x)",
                                                        "config": {"method": "alfa"}, "images": rows}))
    return folder


@pytest.mark.parametrize("csv_only", [False, True])
def test_old_run_folders_get_a_report(tmp_path, csv_only):
    folder = _old_run(tmp_path / "old", csv_only)
    page = write_report(folder)
    html = page.read_text(encoding="utf-8")
    items = gallery_data(page)["items"]
    assert len(items) == (2 if csv_only else 3)
    assert all(i["img"] and (folder / unquote(i["img"])).is_file() for i in items)
    assert 'id="weights-banner"' in html  # "random weights" in the label alone is enough
    assert "<img src=x" not in html  # names are data, never markup
    assert "own range (written before per-class scales)" in html  # no class_stats: overlays are per-image
    if not csv_only:
        assert items[[i["name"] for i in items].index("a.png")]["desc"][0][0] == "a dent"


def test_new_style_descriptors_and_references(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    scores = json.loads((copy / "scores.json").read_text())
    scores["images"][0]["descriptors"] = [{"text": "a crack", "side": "abnormal", "source": "llm", "similarity": 0.4}]
    scores["config"]["references"] = {"widget": [str(copy / "overlays" / "widget" / "good" / "000.png")]}
    (copy / "scores.json").write_text(json.dumps(scores))
    (copy / "metrics.json").unlink()
    page = write_report(copy)
    item = next(i for i in gallery_data(page)["items"] if i["key"] == scores["images"][0]["key"])
    assert item["desc"] == [["a crack", "abnormal", 0.4]]
    html = page.read_text(encoding="utf-8")
    assert "1 normal reference images" in html and "report_files/references/widget/000.jpg" in html


def test_report_of_a_non_run_folder_is_one_line(tmp_path):
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not an alfa-ad run folder" in lines[0]
    assert invoke("report", tmp_path / "missing").exit_code == 2


def test_overlay_scale_option(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=4)
    bad = invoke("run", "--data", data, "--out", tmp_path / "o", "--weights", "planted", "--overlay-scale", "global")
    assert bad.exit_code == 2 and "--overlay-scale" in bad.output
    ok = invoke("run", "--data", data, "--out", tmp_path / "o", "--weights", "planted", "--no-llm",
                "--overlay-scale", "image")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "o" / "class_stats" / "widget.json").read_text())["overlay_scale"] == "image"


@pytest.mark.slow
def test_multi_seed_few_shot_report(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=3, n_defect=3, seed=5)
    for i in range(4):  # normal references
        src = data / "widget" / "test" / "good" / f"{i % 3:03d}.png"
        dst = data / "widget" / "train" / "good" / f"{i:03d}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm", "--shots", "2",
                    "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    top = (out / "report.html").read_text(encoding="utf-8")
    assert "±" in top and 'href="seed_0/report.html"' in top and 'href="seed_1/report.html"' in top
    seed0 = (out / "seed_0" / "report.html").read_text(encoding="utf-8")
    assert "2 normal reference images" in seed0 and "report_files/references/widget/000.jpg" in seed0
    stats = json.loads((out / "seed_0" / "class_stats" / "widget.json").read_text())
    assert stats["scale"]["rule"] == "threshold"  # 2 references: leave-one-out thresholds
    assert stats["scale"]["threshold"] == pytest.approx(stats["thresholds"]["pixel"])
    assert "calibrated threshold" in seed0
    assert load_run(out).seeds["seeds"] == [0, 1]


def test_unlabelled_run_loads_no_metric_or_plotting_code(tmp_path):
    """A run of one unlabelled image (the start-up case) writes its report
    without importing scikit-learn (metrics and curves need labels) or matplotlib (one
    score makes no histogram): about 5 s of imports on a 2-core machine.  Five images do
    get their histogram, drawn with matplotlib's object API (no pyplot)."""
    import subprocess
    import sys

    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.new("RGB", (48, 48), (200, 40, 40)).save(tmp_path / "data" / "part.png")
    code = ("import sys\nfrom alfa_ad.cli import app\ntry:\n    app(sys.argv[2:])\nexcept SystemExit as exc:\n"
            "    print('exit', exc.code)\nprint('loaded', *(m in sys.modules for m in sys.argv[1].split(',')))\n")

    def run(out: str, modules: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, modules, "run", "--data", str(tmp_path / "data"), "--out",
                               str(tmp_path / out), "--weights", "planted", "--no-llm", "--no-overlays"],
                              capture_output=True, text=True, timeout=600)
        assert "exit 0" in done.stdout, done.stdout + done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert run("one", "sklearn,matplotlib") == "loaded False False"
    assert 'class="figure"' not in (tmp_path / "one" / "report.html").read_text(encoding="utf-8")
    for i in range(1, 5):
        Image.new("RGB", (48, 48), (40 * i, 40, 40)).save(tmp_path / "data" / f"part{i}.png")
    assert run("five", "sklearn,matplotlib,matplotlib.pyplot") == "loaded False True False"
    assert 'class="figure"' in (tmp_path / "five" / "report.html").read_text(encoding="utf-8")
