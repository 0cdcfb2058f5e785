"""Run the embedded server as a child process on free loopback ports (benchmarks and tests).

The server writes its startup lines to stderr, as TF Serving does; this reads them (and copies everything into
a log file) to know when it serves. A port that another process took between choosing it and binding it makes
the server fail with `Failed to start server` (gRPC's SO_REUSEPORT is off), and the start is retried on new
ports, so two servers can never share a port silently.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

PORT_IN_USE_MARKERS = ("Failed to BuildAndStart gRPC server", "Address already in use")
READY_LINE = "Exporting HTTP/REST API at:"


def stop_child(proc: subprocess.Popen, timeout: float = 60, sig: int = signal.SIGTERM) -> int:
    """Signal a child process (SIGTERM: a server drains), SIGKILL it after `timeout` seconds; its exit code. A
    child that already ended is only reaped."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (another process may still take it before it is bound)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def listening_pid(port: int) -> Optional[int]:
    """The pid of the process listening on this machine's TCP `port`, or None (nobody, or not ours to see)."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except (psutil.Error, OSError):
        return None
    return None


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message holds its output."""


class ServerProcess:
    """`python -m server` on 127.0.0.1 with the given flags; ready when constructed, stopped by stop()."""

    def __init__(self, *flags: str, startup_timeout: float = 120, attempts: int = 5,
                 log_dir: Optional[Path] = None):
        log_dir = Path(log_dir or os.environ.get("TMPDIR", tempfile.gettempdir()))
        for attempt in range(attempts):
            self.grpc_port, self.rest_port = free_port(), free_port()
            self.log_path = log_dir / f"server-{self.rest_port}.log"
            try:
                self._start(flags, startup_timeout)
                return
            except ServerFailed as exc:
                if attempt + 1 == attempts or not any(marker in str(exc) for marker in PORT_IN_USE_MARKERS):
                    raise

    def _start(self, flags, startup_timeout: float) -> None:
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             *flags], stdout=self._log, stderr=subprocess.PIPE, text=True)
        self._ready = threading.Event()
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._copy_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + startup_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise ServerFailed(f"server exited {self.proc.returncode}:\n{self.logs()[-3000:]}")
            if time.monotonic() > deadline:
                said = self.logs()[-3000:]  # before stop() closes the log
                self.stop()
                raise ServerFailed(f"server not ready in {startup_timeout}s:\n{said}")
        self.startup_output = "".join(self._lines)

    def _copy_stderr(self) -> None:
        for line in self.proc.stderr:
            self._log.write(line)
            self._log.flush()
            if not self._ready.is_set():
                self._lines.append(line)
                if READY_LINE in line:
                    self._ready.set()

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server (SIGTERM drains), SIGKILL after `timeout`; its exit code."""
        code = stop_child(self.proc, timeout, sig)
        self._reader.join(5)
        self._log.close()
        return code
