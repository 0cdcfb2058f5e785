"""Pick the backend a spec asks for: the one entry `make deploy`, `make bench` and the demo share. A deployment is
a context manager (deploy/base.py): `with deployment_for(spec) as deployment:` serves the model and stops what it
started."""
from __future__ import annotations

from typing import Callable, Optional

from deploy.base import DeployError, Deployment, already_serving, bring_up, ports_free
from deploy.containers import DockerDeployment
from deploy.embedded import EmbeddedDeployment
from spec.schema import Spec

__all__ = ["DeployError", "Deployment", "already_serving", "bring_up", "deployment_for", "preflight"]


def deployment_for(spec: Spec, backend: Optional[str] = None, log: Callable[[str], None] = print) -> Deployment:
    """The deployment object for the spec's (or the given) backend."""
    backend = backend or spec.serving.backend
    if backend == "embedded":
        return EmbeddedDeployment(spec, log=log)
    if backend == "docker":
        return DockerDeployment(spec, log)
    raise DeployError(f"unknown backend {backend!r}; use embedded or docker")


def preflight(spec: Spec, deployment: Deployment) -> None:
    """Check what can be checked before any long step (export, training, an image build): the backend itself
    (a Docker engine that answers, a network its ports can be reached on) and the spec's ports (free, or already
    serving this model). Raises DeployError naming the problem and what to do."""
    endpoints = deployment.endpoints
    deployment.preflight()
    if already_serving(endpoints):
        return
    ports_free(spec, endpoints)
