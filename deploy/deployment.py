"""Pick the backend a spec asks for and bring a model up: the one entry `make deploy` and `make bench` share."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

from deploy.embedded import DeployError, EmbeddedDeployment
from spec.schema import Spec
from deploy.waiting import Endpoints, rest_status, wait_ready


def deployment_for(spec: Spec, backend: Optional[str] = None):
    """The deployment object for the spec's (or the given) backend."""
    backend = backend or spec.serving.backend
    if backend == "embedded":
        return EmbeddedDeployment(spec)
    if backend == "docker":
        from deploy.containers import DockerDeployment
        return DockerDeployment(spec)
    raise DeployError(f"unknown backend {backend!r}; use embedded or docker")


def already_serving(endpoints: Endpoints) -> bool:
    """True when the model already answers AVAILABLE at the spec's REST port."""
    return rest_status(endpoints) == "AVAILABLE"


def port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def preflight(spec: Spec, deployment) -> None:
    """Check what can be checked before any long step (export, training, an image build): the backend itself
    (a Docker engine that answers, a network its ports can be reached on) and the spec's ports (free, or already
    serving this model). Raises DeployError naming the problem and what to do."""
    endpoints = deployment.endpoints
    deployment.preflight()
    if already_serving(endpoints):
        return
    _ports_free(spec, endpoints)


def _ports_free(spec: Spec, endpoints: Endpoints) -> None:
    for key, port in (("rest_port", endpoints.rest_port), ("grpc_port", endpoints.grpc_port)):
        if port_in_use(endpoints.host, port):
            raise DeployError(f"{spec.where('serving', key)}: serving.{key}: {endpoints.host}:{port} is in use by "
                              f"something that does not serve '{spec.name}'; stop it or choose another port")


def bring_up(spec: Spec, deployment, log: Callable[[str], None] = print) -> bool:
    """Start `deployment` and wait until the model is AVAILABLE over REST and gRPC.

    Returns False (and starts nothing) when the model is already served at the spec's ports; raises
    DeployError when a port is taken by something else, NotReady (after stopping what it started)
    when the model does not come up in serving.readiness_timeout_s.
    """
    from deploy.waiting import NotReady

    endpoints = deployment.endpoints
    if already_serving(endpoints):
        log(f"'{spec.name}' is already served at {endpoints.rest_url} and {endpoints.grpc_target}; using it")
        return False
    _ports_free(spec, endpoints)  # again: a long export may have passed since preflight
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
