"""Start the real embedded server as a subprocess on free loopback ports, for integration tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from loadtests.run import free_port  # noqa: F401  (the tests' free loopback ports)

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
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ServerProcess:
    def __init__(self, *flags: str, startup_timeout: float = 120):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{self.rest_port}.log"
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.server", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True)
        deadline = time.monotonic() + startup_timeout
        self.startup_output = ""
        while "Exporting HTTP/REST API" not in self.startup_output:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.startup_output}\n{self.logs()[-3000:]}")
            self.startup_output += line
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready in {startup_timeout}s:\n{self.logs()[-3000:]}")

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
