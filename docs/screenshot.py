"""Screenshot a report page for the documentation: `python docs/screenshot.py REPORT.html OUT.png`.

Opens the page offline in Debian's headless Chromium (Playwright), waits until its charts are drawn, and saves the
top of the page (the headline and the first charts) at a fixed size.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python docs/screenshot.py REPORT.html OUT.png", file=sys.stderr)
        return 2
    report, out = Path(argv[0]), Path(argv[1])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not report.is_file() or chromium is None:
        print(f"error: {'no report at ' + str(report) if not report.is_file() else 'chromium is not installed'}",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_context(offline=True, viewport={"width": 1280, "height": 900}).new_page()
            page.goto(report.resolve().as_uri())
            page.wait_for_selector("body[data-rendered=yes]", timeout=15000)
            page.screenshot(path=str(out))
        finally:
            browser.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
