"""The Locust web UI in a real browser: headless Chromium (Debian's) driven by Playwright starts a swarm with
both users from the class picker and sees requests counted for REST and for gRPC."""
from __future__ import annotations

import sys
import time

import pytest

from loadtests.measure.payloadsets import load_or_build
from spec.loader import load_spec
from tests.browser import CHROMIUM, launch
from tests.conftest import write_spec
from tests.serverproc import ServerProcess, free_port, page_process

pytestmark = pytest.mark.slow


@pytest.fixture()
def locust_ui(tmp_path, digits_export):
    if CHROMIUM is None:  # before the export and the server
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    spec_path, version_dir = digits_export
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "benchmark.output_dir": str(tmp_path / "reports"),
        "benchmark.images.count": 3})
    load_or_build(load_spec(spec_path), version_dir, log=lambda line: None)  # the UI then only loads the cache
    server = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}")
    port = free_port()
    command = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--web-host", "127.0.0.1",
               "--web-port", str(port), "--class-picker", "--spec", str(spec_path),
               "--rest-url", server.rest, "--grpc-target", server.grpc_target]
    try:
        with page_process(command, port, tmp_path / "locust.log", "the Locust UI") as url:
            yield url
    finally:
        server.stop()


def test_swarm_from_the_web_ui_counts_rest_and_grpc(locust_ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.goto(locust_ui)
            page.get_by_text("GrpcUser").wait_for()
            page.get_by_text("RestUser").wait_for()
            page.fill("input[name=userCount]", "2")
            page.fill("input[name=spawnRate]", "2")
            page.get_by_role("button", name="Start").click()
            counts = {}
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not (counts.get("REST", 0) > 0 and counts.get("gRPC", 0) > 0):
                page.wait_for_timeout(1000)
                rows = page.request.get(f"{locust_ui}/stats/requests").json()["stats"]
                counts = {row["method"]: row["num_requests"] for row in rows if row["name"] == "digits_cnn"}
            assert counts.get("REST", 0) > 0 and counts.get("gRPC", 0) > 0, counts
            failures = {row["method"]: row["num_failures"] for row in
                        page.request.get(f"{locust_ui}/stats/requests").json()["stats"] if row["name"] == "digits_cnn"}
            assert failures == {"REST": 0, "gRPC": 0}
            # what the user sees in the statistics tab: the page redraws it from its own poll of the stats, a
            # second or two after the counts above exist (a CI run once read the table before its first redraw)
            table, deadline = "", time.monotonic() + 30
            while time.monotonic() < deadline and not all(word in table for word in ("REST", "gRPC", "digits_cnn")):
                page.wait_for_timeout(500)
                table = page.locator("table").first.inner_text()
            assert "REST" in table and "gRPC" in table and "digits_cnn" in table, table
            page.get_by_role("button", name="Stop").click()
        finally:
            browser.close()


def test_an_open_loop_test_from_the_web_ui_keeps_its_rate(locust_ui):
    """Rate and arrival are custom parameters: with a rate, the users send on a schedule (here 30 requests/s over
    both users) instead of back to back, which would be hundreds per second against this model."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.goto(locust_ui)
            page.get_by_text("GrpcUser").wait_for()
            page.fill("input[name=userCount]", "2")
            page.fill("input[name=spawnRate]", "2")
            page.get_by_text("Custom parameters").click()  # the custom parameters' accordion
            page.fill("input[name=rate]", "30")
            page.locator("select[name=arrival]").select_option("constant")
            page.get_by_role("button", name="Start").click()

            def total() -> int:
                rows = page.request.get(f"{locust_ui}/stats/requests").json()["stats"]
                return sum(row["num_requests"] for row in rows if row["name"] == "digits_cnn")

            def fresh(after: int) -> tuple[int, float]:
                """The count when the UI's statistics next change (it refreshes them every couple of seconds)."""
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    count = total()
                    if count != after:
                        return count, time.monotonic()
                    page.wait_for_timeout(100)
                raise AssertionError(f"no requests counted for 60 s (stuck at {after})")

            first, started = fresh(total())
            page.wait_for_timeout(9000)
            last, ended = fresh(total())
            rate = (last - first) / (ended - started)
            assert 30 * 0.8 < rate < 30 * 1.2, rate
            page.get_by_role("button", name="Stop").click()
        finally:
            browser.close()
