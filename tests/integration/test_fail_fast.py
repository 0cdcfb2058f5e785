"""Every entry point checks what it can before a long step: a missing Docker engine or a taken port is one line
at once, before any export or training (the model's folder is never created)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_spec
from tests.serverproc import free_port

pytestmark = pytest.mark.slow


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _unexported_spec(tmp_path):
    return write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(tmp_path / "models"), "benchmark.output_dir": str(tmp_path / "reports"),
        "serving.grpc_port": free_port(), "serving.rest_port": free_port()})


@pytest.mark.parametrize("command", [("-m", "deploy", "up", "--backend", "docker"),
                                     ("-m", "loadtests", "bench", "--backend", "docker"),
                                     ("-m", "demo", "--backend", "docker")])
def test_no_docker_engine_is_said_before_any_export(tmp_path, command):
    spec = _unexported_spec(tmp_path)
    result = _cli(*command, "--spec", str(spec), DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "no Docker engine reachable" in output and "Traceback" not in output, output[-2000:]
    assert not (tmp_path / "models").exists() and "export" not in result.stdout, output[-2000:]


@pytest.mark.parametrize("command", [("-m", "deploy", "up"), ("-m", "loadtests", "bench")])
def test_a_taken_port_is_said_before_any_export(tmp_path, command):
    spec = _unexported_spec(tmp_path)
    import yaml
    port = yaml.safe_load(spec.read_text())["serving"]["rest_port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = _cli(*command, "--spec", str(spec))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert f"127.0.0.1:{port} is in use by something that does not serve 'digits_cnn'" in output, output[-2000:]
    assert f"{spec}:" in output  # names the line of the spec that sets the port
    assert not (tmp_path / "models").exists(), output[-2000:]
