"""Open a report.html in headless Chromium (Playwright driving the system's chromium) and check it.

Used by tests/test_report_browser.py; also a script for the README screenshot:

    python tests/browser.py RUN_DIR/report.html docs/report.png [WIDTHxHEIGHT]
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse


def chromium_path() -> str | None:
    """``$ALFA_AD_CHROMIUM``, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("ALFA_AD_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    links: int = 0
    broken_links: list[str] = field(default_factory=list)
    cards: int = 0
    orders: dict[str, list[float]] = field(default_factory=dict)  # sort option -> card scores in page order
    first_outcomes: list[str] = field(default_factory=list)  # outcomes of the first cards, default order
    filtered: dict[str, int] = field(default_factory=dict)  # "type=good" -> cards shown
    opened_list: int = -1  # list items shown after opening the first card's first <details>
    banner: str = ""


_EAGER_AND_WAIT = """async () => {
  const imgs = Array.from(document.images);
  imgs.forEach((img) => { img.loading = "eager"; });
  await Promise.all(imgs.map((img) => img.complete ? null : new Promise((ok) => {
    img.addEventListener("load", ok); img.addEventListener("error", ok); })));
  return imgs.map((img) => [img.currentSrc || img.src, img.naturalWidth]);
}"""


def _scores(page) -> list[float]:
    return [float(s) for s in page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.score)") if s != ""]


@contextmanager
def open_page(report: Path, out: PageCheck, width: int = 1280, height: int = 1000):
    """A Chromium page showing ``report`` (file://, every other request blocked); console errors,
    page errors and failed requests go into ``out``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(),
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                           "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.route(lambda url: not url.startswith(("file:", "data:")), lambda route: route.abort())
            page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.console_errors.append(str(e)))
            page.on("requestfailed", lambda r: out.failed_requests.append(r.url))
            page.goto(Path(report).resolve().as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()


def check_report(report: Path, screenshot: Path | None = None, width: int = 1280, height: int = 1000) -> PageCheck:
    """Load ``report`` from disk, check it, optionally save a screenshot."""
    out = PageCheck()
    with open_page(report, out, width, height) as page:
        out.banner = page.inner_text("#weights-banner") if page.query_selector("#weights-banner") else ""
        if screenshot is not None:  # before any change below: what a reader sees first, images loaded
            page.evaluate(_EAGER_AND_WAIT)
            page.screenshot(path=str(screenshot))
        if page.query_selector("#page-size"):
            page.select_option("#page-size", "10000")
        out.cards = page.locator(".card").count()
        results = page.evaluate(_EAGER_AND_WAIT)
        out.images = len(results)
        out.broken_images = [src for src, w in results if not w]
        hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
        out.links = len(hrefs)
        for href in hrefs:
            url = urlparse(href)
            if url.scheme == "file" and not Path(unquote(url.path)).exists():
                out.broken_links.append(href)
            elif url.scheme not in ("file", "data"):
                out.broken_links.append(href)  # the page must not point to the network
        if page.query_selector("#sort"):
            out.first_outcomes = page.eval_on_selector_all(".card", "cs => cs.slice(0, 5).map(c => c.className)")
            for option in ("score-asc", "score-desc", "rank"):
                page.select_option("#sort", option)
                out.orders[option] = _scores(page)
            page.select_option("#f-type", "good")
            out.filtered["type=good"] = page.locator(".card").count()
            page.select_option("#f-type", "")
            details = page.locator(".card details").first
            if details.count():
                details.locator("summary").click()
                # the toggle event that fills the list is dispatched as a task after the click: wait for it
                details.locator("ul, ol").first.wait_for(state="attached", timeout=5000)
                out.opened_list = details.locator("li").count()
    return out


if __name__ == "__main__":  # pragma: no cover
    size = [int(v) for v in sys.argv[3].split("x")] if len(sys.argv) > 3 else [1280, 1000]  # e.g. 1280x1400
    result = check_report(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None, *size)
    print(result)
    sys.exit(1 if result.console_errors or result.broken_images or result.broken_links else 0)
