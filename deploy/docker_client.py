"""The only module that imports the docker SDK: the engine connection and the labels on everything we create.

Every image and container carries LABEL_MANAGED, so `make down` / `make clean` find them even after a crash.
"""
from __future__ import annotations

import functools
import os

from deploy.base import DeployError

LABEL_MANAGED = "tfserve-bench.managed"
LABEL_MODEL = "tfserve-bench.model"
LABEL_REST_PORT = "tfserve-bench.rest-port"
LABEL_SPEC = "tfserve-bench.spec"
LABEL_BASE_IMAGE = "tfserve-bench.base-image"  # the image a model image was built on (its FROM)
LABEL_SERVER = "tfserve-bench.server"          # "embedded" on our server's images and all built on them
TF_SERVING = "TensorFlow Serving"


def client():
    """A connected docker client, or DeployError saying which engine was tried and what to do."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        engine = docker.from_env(timeout=120)
        engine.ping()
    except DockerException as exc:
        raise DeployError(f"no Docker engine reachable at {where} ({exc}); start one (e.g. dockerd, or "
                          "systemctl start docker) or use serving.backend: embedded") from None
    return engine


def translated(function):
    """Decorate a function that talks to the engine: any docker SDK error becomes a one-line DeployError."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        from docker.errors import DockerException

        try:
            return function(*args, **kwargs)
        except DockerException as exc:
            explanation = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
            raise DeployError(f"the Docker engine refused {function.__name__.strip('_')}: {explanation}") from None
    return call


def errors():
    """The docker SDK's exception module (callers catch its classes without importing docker themselves)."""
    import docker.errors
    return docker.errors


def gpu_device_requests() -> list:
    """`--gpus all` as docker SDK arguments: one request for every GPU with the 'gpu' capability."""
    from docker.types import DeviceRequest
    return [DeviceRequest(count=-1, capabilities=[["gpu"]])]


def labels_for(model: str, rest_port: int, spec: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_MODEL: model, LABEL_REST_PORT: str(rest_port), LABEL_SPEC: spec}
