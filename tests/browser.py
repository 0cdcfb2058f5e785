"""Open a report page in Debian's headless Chromium (through Playwright) and say what rendered."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright):
    """Debian's Chromium, headless, from Playwright; the test is skipped, saying why, when it is not installed."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def render(path: Path, hover: str | None = None, select: dict | None = None) -> dict:
    """Load `path` from the file system with the network cut off; returns the console errors, any request that
    left the page's own file, each chart's marks (points, lines, bars) and, given `hover`, the tooltip it shows."""
    from playwright.sync_api import sync_playwright

    out: dict = {"errors": [], "requests": [], "charts": {}, "tip": None}
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.on("console", lambda m: out["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out["errors"].append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:"))
                    else out["requests"].append(r.url))
            page.goto(Path(path).resolve().as_uri())
            if page.query_selector("#report-data"):
                page.wait_for_selector("body[data-rendered=yes]", timeout=15000)
            for selector, value in (select or {}).items():
                page.select_option(selector, value)
            for chart in page.query_selector_all(".chart, svg[aria-label]"):
                name = chart.get_attribute("id") or chart.get_attribute("aria-label")
                out["charts"][name] = {kind: len(chart.query_selector_all(kind)) for kind in ("circle", "path", "rect")}
            if hover:
                page.hover(hover)
                out["tip"] = page.inner_text("#tip")
            out["headline"] = page.inner_text("#headline") if page.query_selector("#headline") else None
        finally:
            browser.close()
    return out
