"""The embedded backend: `python -m server` started for a spec, with the same config files
and flags a TF Serving container gets, run in its own session so it can outlive `make deploy`.

State lives in <state_dir>/<model>-<rest port>/: server.pid, server.log and the generated configs, so
`make down` and `make status` find a server started by an earlier command.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from deploy.base import DeployError, Deployment
from deploy.serving_config import ServerLayout, server_flags, write_configs
from server.process import listening_pid
from spec.schema import Spec

PACKAGES = Path(__file__).resolve().parents[1]  # the directory holding the packages: a checkout, or site-packages
# the embedded backend's state (pid, log, configs; the wheels cache; compose and k8s output): where the user says,
# else under the working directory, never inside the installed code
STATE_DIR = Path(os.environ.get("TFSB_STATE_DIR") or Path.cwd() / ".run")
OUR_SERVER = "tfserve-bench embedded server"  # what provenance calls our server (TF Serving's is "TensorFlow Serving")


def _cmdline(pid: int) -> str:
    """The process's command line as one string ("" when no such process is readable)."""
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return ""


class EmbeddedDeployment(Deployment):
    """One embedded server for one spec: start (detached or owned), find, stop, logs."""

    backend = "embedded"

    def __init__(self, spec: Spec, state_dir: Path = STATE_DIR, log: Callable[[str], None] = print):
        super().__init__(spec, log)
        self.dir = state_dir / f"{spec.name}-{spec.serving.rest_port}"
        self.pid_file = self.dir / "server.pid"
        self.log_file = self.dir / "server.log"
        self._proc: Optional[subprocess.Popen] = None

    @property
    def image(self) -> str:
        return "embedded (python -m server)"

    @property
    def server_identity(self) -> dict:
        """What serves: our server, on this machine's Python (no image)."""
        return {"server": OUR_SERVER, "base_image": None, "base_image_id": None}

    def pid(self) -> Optional[int]:
        """The running server's pid from the pid file, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if "-m server" in _cmdline(pid) else None

    @property
    def server_pid(self) -> Optional[int]:
        """The server's pid (for CPU accounting), whether this object started it, an earlier command did (its pid
        file), or it was started by hand (whatever listens on the spec's REST port)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return self.pid() or listening_pid(self.spec.serving.rest_port)

    def memory_bytes(self) -> Optional[int]:
        """The server process's resident set (its children's too), or None when it does not run."""
        import psutil

        pid = self.server_pid
        if not pid:
            return None
        try:
            process = psutil.Process(pid)
            return process.memory_info().rss + sum(child.memory_info().rss for child in process.children(True))
        except (psutil.Error, OSError):
            return None

    def preflight(self) -> None:
        """Nothing to check before a long step: the embedded server runs from this very installation."""

    def start(self) -> None:
        """Write the configs and start the server; returns once the process runs (not yet ready)."""
        running = self.pid()
        if running:
            raise DeployError(f"an embedded server for '{self.spec.name}' already runs (pid {running}); "
                              f"use it, or stop it first with make down SPEC={self.spec.origin or '<spec>'}")
        config_dir = self.dir / "config"
        layout = ServerLayout.on_host(self.spec, config_dir)
        write_configs(self.spec, config_dir, layout)
        flags = server_flags(self.spec, layout, embedded=True)
        log = open(self.log_file, "wb")
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "server", *flags], cwd=PACKAGES,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        finally:
            log.close()
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def alive(self) -> Optional[str]:
        """None while the server runs, else why it is not running."""
        if self._proc is not None:
            code = self._proc.poll()
            return None if code is None else f"the server exited with status {code}"
        return None if self.pid() else "no embedded server is running"

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM (TF Serving drains in-flight requests), SIGKILL after `timeout_s`. True if one was stopped."""
        pid = self._proc.pid if self._proc is not None and self._proc.poll() is None else self.pid()
        if not pid:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            if self._proc is None and "-m server" not in _cmdline(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
        self.pid_file.unlink(missing_ok=True)
        return True
