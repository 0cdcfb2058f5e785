"""The Deployment protocol (deploy/base.py): both backends implement it, and `with` stops exactly what it
started, however the block ends."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from deploy import base
from deploy.base import Deployment
from deploy.containers import DockerDeployment
from deploy.embedded import EmbeddedDeployment
from server.process import free_port, stop_child
from spec.loader import load_spec


class Recorded(Deployment):
    backend = "recorded"
    image = "none"
    server_identity = {}

    def __init__(self, spec):
        super().__init__(spec, log=lambda line: None)
        self.calls = []

    def preflight(self):
        self.calls.append("preflight")

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")
        return True

    def alive(self):
        return None

    def logs(self):
        return ""


@pytest.fixture()
def spec(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: toy
        model:
          source: {{kind: keras_application, application: MobileNetV2, weights: null}}
        serving: {{rest_port: {free_port()}, grpc_port: {free_port()}}}
        """))  # free ports: nothing else's server answers as this one
    return load_spec(path)


@pytest.mark.parametrize("already_served", [False, True])
def test_with_stops_only_what_it_started_even_on_an_error(spec, monkeypatch, already_served):
    def bring_up(spec_, deployment, log):
        if already_served:
            return False
        deployment.start()
        return True
    monkeypatch.setattr(base, "bring_up", bring_up)
    deployment = Recorded(spec)
    with pytest.raises(KeyboardInterrupt):
        with deployment as entered:
            assert entered is deployment and deployment.started is not already_served
            raise KeyboardInterrupt
    assert deployment.calls == ([] if already_served else ["start", "stop"])
    assert not deployment.started


def test_both_backends_are_deployments_and_an_incomplete_one_is_refused(spec):
    assert issubclass(EmbeddedDeployment, Deployment) and issubclass(DockerDeployment, Deployment)
    embedded = EmbeddedDeployment(spec)
    assert embedded.endpoints.rest_port == spec.serving.rest_port and embedded.serving_version is None
    assert embedded.server_pid is None and embedded.alive() == "no embedded server is running"
    import os
    import socket
    with socket.socket() as sock:  # a server started by hand on the spec's REST port: its pid, for CPU accounting
        sock.bind(("127.0.0.1", spec.serving.rest_port))
        sock.listen()
        assert embedded.server_pid == os.getpid()

    class Incomplete(Deployment):
        def start(self):
            pass
    with pytest.raises(TypeError, match="abstract"):
        Incomplete(spec)


def test_stop_child_signals_then_kills_a_child_that_does_not_stop_and_reaps_one_that_ended():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_child(polite, timeout=30) == -signal.SIGTERM
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    assert stop_child(stubborn, timeout=0.5) == -signal.SIGKILL
    stubborn.stdout.close()
    ended = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    ended.wait()
    assert stop_child(ended) == 3
