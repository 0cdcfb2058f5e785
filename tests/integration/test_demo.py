"""make demo in a real browser: headless Chromium (Debian's) driven by Playwright uploads a photo and sees both
protocols' classes and latencies, gets a clear message for a text file and when the model is down, and keeps
working; the page's screenshot for the documentation is taken here (written to docs/demo.png only by
`make screenshots`, so a test run leaves the checkout as it was). Upload limits are checked over plain HTTP."""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from exporter.images import bundled_photos, encode
from tests.browser import launch
from tests.conftest import REPO, write_spec
from tests.serverproc import ServerProcess, free_port, page_process

pytestmark = pytest.mark.slow
SCREENSHOT = REPO / "docs" / "demo.png"
REFRESH = os.environ.get("TFSB_REFRESH_SCREENSHOTS") == "1"  # set by make screenshots


@pytest.fixture()
def demo(tmp_path, digits_export):
    """The model served by a separate embedded server (so a test can take it down), and the demo page on it."""
    _, version_dir = digits_export
    server = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}")
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "serving.grpc_port": server.grpc_port,
        "serving.rest_port": server.rest_port})
    port = free_port()
    command = [sys.executable, "-m", "demo", "--spec", str(spec_path), "--port", str(port), "--max-upload-mb", "0.5"]
    try:
        with page_process(command, port, tmp_path / "demo.log", "the demo page") as url:
            yield url, server, tmp_path
    finally:
        server.stop()


def _photo(tmp_path, name: str = "chelsea", fmt: str = "jpeg"):
    image = dict(bundled_photos())[name]
    path = tmp_path / f"{name}.{'jpg' if fmt == 'jpeg' else 'png'}"
    path.write_bytes(encode(np.ascontiguousarray(image[::2, ::2]), fmt))
    return path


def _post(url: str, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/classify", data=body), timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _results(page) -> dict:
    page.locator("#rest ol li .label").first.wait_for()
    page.locator("#grpc ol li .label").first.wait_for()
    return {card: {"latency": page.inner_text(f"#{card} .latency"),
                   "labels": page.locator(f"#{card} ol li .label").all_inner_texts(),
                   "scores": page.locator(f"#{card} ol li .score").all_inner_texts()} for card in ("rest", "grpc")}


def test_upload_a_photo_and_see_both_protocols(demo):
    from playwright.sync_api import sync_playwright

    url, _, tmp_path = demo
    photo = _photo(tmp_path, "chelsea")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(url)
            page.locator("#model-meta", has_text="version 1").wait_for()
            assert page.inner_text("#model-name") == "digits_cnn"
            assert "serving_default" in page.inner_text("#model-meta")
            # what the export expects, from its provenance (digits: 32x32 grey, unit preprocessing)
            assert "expects 32x32x1, x / 255, values in [0, 1]" in page.inner_text("#model-meta")
            page.set_input_files("#file", str(photo))
            shown = _results(page)
            for card in ("rest", "grpc"):
                assert shown[card]["latency"].endswith(" ms") and float(shown[card]["latency"].split()[0]) > 0
                assert len(shown[card]["labels"]) == 3 and set(shown[card]["labels"]) <= set("0123456789")
            assert shown["rest"]["labels"] == shown["grpc"]["labels"]  # the same answer over both protocols
            assert shown["rest"]["scores"] == shown["grpc"]["scores"]
            assert "JPEG" in page.inner_text("#imageinfo") and not page.is_visible("#error")
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
            if REFRESH:
                shutil.copyfile(shot, SCREENSHOT)
            page.get_by_role("button", name="coffee").click()  # a bundled sample works too
            page.locator("#imageinfo", has_text="coffee.jpg · JPEG").wait_for()
            assert len(_results(page)["grpc"]["labels"]) == 3
        finally:
            browser.close()


def test_a_text_file_and_a_model_that_is_down_get_a_message_and_the_page_keeps_working(demo):
    from playwright.sync_api import sync_playwright

    url, server, tmp_path = demo
    text = tmp_path / "notes.txt"
    text.write_text("this is not a photo\n")
    photo = _photo(tmp_path, "astronaut", "png")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.goto(url)
            page.set_input_files("#file", str(text))
            page.locator("#error", has_text="not a JPEG or PNG image").wait_for()
            page.set_input_files("#file", str(photo))  # the next upload works
            assert len(_results(page)["rest"]["labels"]) == 3
            assert not page.is_visible("#error") and "PNG" in page.inner_text("#imageinfo")
            server.stop()
            page.get_by_role("button", name="rocket").click()
            page.locator("#error", has_text="does not answer").wait_for()
            assert "make deploy SPEC=" in page.inner_text("#error")
        finally:
            browser.close()


def test_upload_limits_and_damaged_images_over_http(demo):
    url, _, tmp_path = demo
    for size in (600_000, 8_000_000):  # 8 MB outgrows the socket buffers: the client is still sending when refused
        status, answer = _post(url, b"\xff\xd8" + bytes(size))
        assert status == 413 and "limit is 0.5 MB" in answer["error"], size
    status, answer = _post(url, b"")
    assert status == 400 and "empty" in answer["error"]
    jpeg = _photo(tmp_path).read_bytes()
    status, answer = _post(url, jpeg[: len(jpeg) // 2])
    assert status == 400 and "damaged" in answer["error"]
    gif = tmp_path / "x.gif"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(gif)
    status, answer = _post(url, gif.read_bytes())
    assert status == 415 and "JPEG and PNG only" in answer["error"]
    status, answer = _post(url, jpeg)
    assert status == 200 and [r["protocol"] for r in answer["results"]] == ["REST", "gRPC"]
    assert all(r["ok"] and len(r["top"]) == 3 for r in answer["results"])
    assert answer["results"][0]["request_bytes"] > answer["results"][1]["request_bytes"]  # b64 JSON is larger
