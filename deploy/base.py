"""What every deployment is: the `Deployment` base the embedded and Docker backends implement, and bringing one
up. A deployment is a context manager: `with deployment_for(spec) as deployment:` brings the model up (unless it
is already served at the spec's ports, which is then used as it is) and stops, on the way out, only what it
started, Ctrl-C included. Callers never write their own cleanup."""
from __future__ import annotations

import abc
import dataclasses
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from deploy.waiting import Endpoints, NotReady, rest_status, wait_ready
from spec.errors import HarnessError
from spec.schema import Spec


class DeployError(HarnessError):
    """A deployment cannot be started or stopped; the message says what and what to do."""


class Deployment(abc.ABC):
    """One spec's model on one backend: where it answers, what serves it, and start, stop, alive, logs."""

    backend: str = ""
    serving_version: Optional[str] = None  # the TF Serving version, where the backend knows it

    def __init__(self, spec: Spec, log: Callable[[str], None] = print):
        self.spec = spec
        self.log = log
        self.endpoints = Endpoints(spec.serving.host, spec.serving.rest_port, spec.serving.grpc_port, spec.name)
        self.started = False  # whether entering this deployment started it (so leaving it stops it)
        # model name -> a host folder the docker backend mounts (read-only) over the image's copy of that model, so
        # a version delivered into the folder reaches the server; the embedded backend serves from the spec's paths
        self.mounts: dict[str, Path] = {}

    @property
    @abc.abstractmethod
    def image(self) -> str:
        """What runs: an image tag, or how the embedded server is started."""

    @property
    @abc.abstractmethod
    def server_identity(self) -> dict:
        """server (TF Serving or ours), base_image and base_image_id: what really serves, for provenance."""

    @property
    def server_pid(self) -> Optional[int]:
        """The serving process's pid on this machine, for CPU accounting (None where there is none)."""
        return None

    @abc.abstractmethod
    def preflight(self) -> None:
        """Check the backend itself before any long step (DeployError naming the problem)."""

    def prepare(self) -> None:
        """What start needs before the server process begins (the docker backend builds its image here), so a
        cold start times the server alone. start calls it when it has not been called."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start serving; returns once it runs (not yet ready: bring_up waits for that)."""

    def memory_bytes(self) -> Optional[int]:
        """What the server holds in memory now (embedded: the process's resident set; docker: the container's
        usage less its inactive page cache, as `docker stats` shows it), or None where it cannot be read."""
        return None

    @abc.abstractmethod
    def stop(self) -> bool:
        """Stop what serves the spec's model at its ports; True if something was stopped."""

    @abc.abstractmethod
    def alive(self) -> Optional[str]:
        """None while it runs, else why it does not."""

    @abc.abstractmethod
    def logs(self) -> str:
        """The server's recent output."""

    def __enter__(self) -> "Deployment":
        self.started = bring_up(self.spec, self, self.log)
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.log(f"stopping the {self.backend} deployment this run started")
            self.stop()
            self.started = False


def already_serving(endpoints: Endpoints) -> bool:
    """True when the model already answers AVAILABLE at the spec's REST port."""
    return rest_status(endpoints) == "AVAILABLE"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ports_free(spec: Spec, endpoints: Endpoints) -> None:
    """DeployError when a spec's port is taken by something that does not serve its model."""
    for key, port in (("rest_port", endpoints.rest_port), ("grpc_port", endpoints.grpc_port)):
        if port_in_use(endpoints.host, port):
            raise DeployError(f"{spec.where('serving', key)}: serving.{key}: {endpoints.host}:{port} is in use by "
                              f"something that does not serve '{spec.name}'; stop it or choose another port")


def bring_up(spec: Spec, deployment: Deployment, log: Callable[[str], None] = print) -> bool:
    """Start `deployment` and wait until the model is AVAILABLE over REST and gRPC.

    Returns False (and starts nothing) when the model is already served at the spec's ports; raises
    DeployError when a port is taken by something else, NotReady (after stopping what it started)
    when the model does not come up in serving.readiness_timeout_s.
    """
    endpoints = deployment.endpoints
    if already_serving(endpoints):
        log(f"'{spec.name}' is already served at {endpoints.rest_url} and {endpoints.grpc_target}; using it")
        return False
    ports_free(spec, endpoints)  # again: a long export may have passed since preflight
    also = [served.name for served in spec.served[1:]]
    log(f"starting {spec.name} on the {deployment.backend} backend ({deployment.image})"
        + (f", also serving {', '.join(also)}" if also else ""))
    deployment.start()
    started = time.monotonic()
    try:
        for served in spec.served:  # every model of the model config must be AVAILABLE, not just the first
            left = spec.serving.readiness_timeout_s - (time.monotonic() - started)
            wait_ready(dataclasses.replace(endpoints, model=served.name), max(left, 1.0), logs=deployment.logs,
                       alive=deployment.alive)
    except (NotReady, KeyboardInterrupt):
        deployment.stop()
        raise
    log(f"ready in {time.monotonic() - started:.1f}s: REST {endpoints.rest_url}, gRPC {endpoints.grpc_target}"
        + (f" (models: {', '.join(served.name for served in spec.served)})" if also else ""))
    return True
