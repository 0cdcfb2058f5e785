"""Test helpers around the real server process: REST calls with parsed answers, and web pages run until a block ends."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from server import process
from server.process import free_port  # noqa: F401  (the tests' free loopback ports)

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def page_process(command: list[str], port: int, log_path: Path, what: str, timeout: float = 120):
    """Run `command` (a web page on 127.0.0.1:port) until the block ends; yields its URL once it answers.

    AssertionError with the log's tail if it exits or does not answer in time; always terminated at the end.
    """
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"{what} did not come up at {url}: "
                                             f"{log_path.read_text()[-2000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            process.stop_child(proc, timeout=30)


class ServerProcess(process.ServerProcess):
    """The server process, plus one-call REST requests for assertions."""

    def http(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        """(status, parsed JSON or raw text) for one REST call."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        request = urllib.request.Request(self.rest + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw, ctype = response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as error:
            status, raw, ctype = error.code, error.read(), error.headers.get("Content-Type")
        if ctype == "application/json" and raw:
            return status, json.loads(raw)
        return status, raw.decode("utf-8", "replace")
