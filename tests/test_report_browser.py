"""report.html in a real browser: headless Chromium driven by Playwright (``.ci/install-browser``).

Skipped with a reason when playwright or a chromium executable is missing.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset

from browser import PageCheck, check_report, chromium_path, open_page

pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[browser]')")
if chromium_path() is None:
    pytest.skip("no chromium executable (run .ci/install-browser, or set ALFA_AD_CHROMIUM)", allow_module_level=True)

pytestmark = pytest.mark.browser
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _assert_healthy(check, n_images: int) -> None:
    assert check.console_errors == []
    assert check.failed_requests == []
    assert check.cards == n_images
    assert check.images >= n_images + 1  # every thumbnail and the class figure(s)
    assert check.broken_images == []
    assert check.links >= n_images and check.broken_links == []
    asc, desc = check.orders["score-asc"], check.orders["score-desc"]
    assert len(asc) == n_images and asc == sorted(asc) and desc == sorted(desc, reverse=True)
    assert asc != desc


def test_report_in_chromium(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data")  # 4 good + 6 spot images
    out = tmp_path / "out"
    result = invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm")
    assert result.exit_code == 0, result.output
    shot = tmp_path / "report.png"
    check = check_report(out / "report.html", screenshot=shot)
    _assert_healthy(check, 10)
    assert "planted weights" in check.banner
    assert check.filtered["type=good"] == 4
    assert check.opened_list > 0  # a card's kept prompts, filled when opened
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 1000)


def test_broken_image_is_detected(tmp_path):
    """The check itself can fail: a deleted thumbnail is reported as broken."""
    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1, seed=2)
    out = tmp_path / "out"
    assert invoke("run", "--data", data, "--out", out, "--weights", "planted", "--no-llm").exit_code == 0
    thumb = next((out / "report_files" / "thumbs").rglob("*.jpg"))
    thumb.unlink()
    check = check_report(out / "report.html")
    assert len(check.broken_images) == 1 and thumb.name in check.broken_images[0]


@pytest.mark.slow
def test_large_run_is_paginated(tmp_path):
    """2,500 images: 2,000 per page by default, the rest on page 2; lazy thumbnails."""
    n = 2500
    folder = tmp_path / "big"
    (folder / "overlays" / "part" / "good").mkdir(parents=True)
    tiny = Image.new("RGB", (8, 4), (90, 90, 200))
    rows = []
    for i in range(n):
        tiny.save(folder / "overlays" / "part" / "good" / f"{i:04d}.png")
        rows.append({"class": "part", "path": f"/x/{i:04d}.png", "defect_type": "good", "label": 0,
                     "score": (i * 7919 % n) / n})
    (folder / "scores.json").write_text(json.dumps({"config": {"weights": "random weights"}, "images": rows}))
    assert invoke("report", folder).exit_code == 0
    check = PageCheck()
    with open_page(folder / "report.html", check) as page:
        assert page.locator(".card").count() == 2000
        assert page.inner_text("#page") == "page 1 of 2"
        page.click("#next")
        assert page.locator(".card").count() == 500 and page.inner_text("#page") == "page 2 of 2"
        page.select_option("#page-size", "10000")
        assert page.locator(".card").count() == n
        lazy = page.eval_on_selector_all(".card img", "imgs => imgs.filter(i => i.loading === 'lazy').length")
        assert lazy == n
    assert check.console_errors == [] and check.failed_requests == []


@pytest.mark.data
@pytest.mark.slow
def test_hazelnut_toy_report_in_chromium(shared_data, tmp_path):
    """The issue's acceptance run: all 23 test images, rebuilt by ``alfa-ad report``."""
    out = tmp_path / "out"
    result = invoke("run", "--data", shared_data / "hazelnut_toy", "--weights", "planted", "--out", out)
    assert result.exit_code == 0, result.output
    (out / "report.html").unlink()
    assert invoke("report", out).exit_code == 0
    check = check_report(out / "report.html", screenshot=tmp_path / "hazelnut.png")
    _assert_healthy(check, 23)
    assert check.filtered["type=good"] == 6
    first = check.first_outcomes[0].split()
    assert "FN" in first or "FP" in first  # planted weights miss some anomalies: they come first
