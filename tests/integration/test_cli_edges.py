"""Every everyday mistake through every command: one short `error:` line on stderr, the documented exit code
(2 for a user error), no traceback, nothing left running."""
from __future__ import annotations

import re
import socket

import pytest

from server.process import free_port
from tests.conftest import run_cli, write_spec

pytestmark = pytest.mark.slow

# TensorFlow's C++ logger (absl), which TF_CPP_MIN_LOG_LEVEL does not silence in TF 2.21: not our messages
TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog)")


def commands(spec) -> dict[str, list[str]]:
    return {"export": ["-m", "exporter", "--spec", str(spec)],
            "deploy": ["-m", "deploy", "up", "--spec", str(spec)],
            "bench": ["-m", "loadtests", "bench", "--spec", str(spec), "--duration", "1s", "--warmup", "0s"],
            "demo": ["-m", "demo", "--spec", str(spec), "--port", str(free_port())]}


def assert_one_line(result, *fragments: str, code: int = 2) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not TF_LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert len(lines[0]) < 2000, lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _spec(tmp_path, **values):
    values = {"export.base_path": str(tmp_path / "models"), "serving.grpc_port": free_port(),
              "serving.rest_port": free_port(), **values}
    return write_spec(tmp_path, "specs/digits_cnn.yaml", **values)


MISTAKES = {
    "missing spec file": (lambda tmp: tmp / "nope.yaml", ["nope.yaml"]),
    "misspelled key": (lambda tmp: _spec(tmp, **{"model.input.hieght": 32}), ["model.input.hieght: unknown key"]),
    "misspelled keras application": (lambda tmp: _spec(tmp, **{"model.source": {
        "kind": "keras_application", "application": "MobileNetV9", "weights": None}}),
        ["model.source.application: 'MobileNetV9' is not in keras.applications"]),
    "builder module that does not exist": (lambda tmp: _spec(tmp, **{"model.source": {
        "kind": "builder", "function": "no_such_module:build"}}),
        ["cannot import module 'no_such_module'"]),
}


@pytest.mark.parametrize("command", ["export", "deploy", "bench", "demo"])
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_one_line_with_exit_2(tmp_path, command, mistake):
    make, fragments = MISTAKES[mistake]
    spec = make(tmp_path)
    result = run_cli(*commands(spec)[command], timeout=300)
    assert_one_line(result, *fragments)
    assert not (tmp_path / ".run").exists()


def test_bad_overrides_and_flags_are_one_line(tmp_path, digits_export):
    spec = _spec(tmp_path, **{"export.base_path": str(digits_export[1].parents[1])})
    assert_one_line(run_cli("-m", "loadtests", "bench", "--spec", str(spec), "--users", "0,abc"),
                    "command-line override")
    assert_one_line(run_cli("-m", "loadtests", "bench", "--spec", str(spec), "--workers", "-1"), "WORKERS")
    assert_one_line(run_cli("-m", "exporter", "--spec", str(spec), "--version", "x"), "--version 'x'")
    assert_one_line(run_cli("-m", "demo", "--spec", str(spec), "--max-upload-mb", "0"), "--max-upload-mb")
    assert_one_line(run_cli("-m", "exporter", "inspect", str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize("command", ["deploy", "bench", "demo"])
def test_a_port_held_by_something_else_is_one_line(tmp_path, digits_export, command):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = _spec(tmp_path, **{"export.base_path": str(digits_export[1].parents[1]), "serving.rest_port": port})
        result = run_cli(*commands(spec)[command], timeout=300)
    assert_one_line(result, f"127.0.0.1:{port} is in use", "serving.rest_port")
