"""The docker backend: build the spec's model image, run it, find it by label, stop and remove it.

A container is named tfsb-<model>-<rest port> and labelled (deploy.docker_client), so `make down` finds it
after a crash of the command that started it, and deploying again replaces an exited one.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from deploy import docker_client
from deploy.base import DeployError, Deployment
from deploy.embedded import OUR_SERVER
from deploy.images import (CONTAINER_PORTS, FLAVOURS, HARDENING, build, build_options, image_tag, prepare_context,
                           serving_version)
from exporter.export import existing_versions, read_provenance
from spec.schema import Spec


@dataclass(frozen=True)
class BuildPlan:
    tag: str
    buildargs: dict
    target: Optional[str]
    versions: list
    serving_version: str


def build_plan(spec: Spec, log: Callable[[str], None] = print) -> BuildPlan:
    """Tag, build args and target of the spec's image (DeployError when nothing is exported)."""

    flavour = spec.serving.image
    versions = existing_versions(spec.model_dir)
    if not versions:
        raise DeployError(f"no exported version under {spec.model_dir}: run make export SPEC={spec.origin}")
    exported_tf = (read_provenance(spec.model_dir / str(versions[-1])) or {}).get("tensorflow")
    version = serving_version(spec, exported_tf, log)
    buildargs = {"TF_SERVING_VERSION": version, "MODEL": spec.name, "MODEL_VERSIONS": ",".join(map(str, versions)),
                 "SPEC_SHA256": spec.sha256, "SOURCE": str(spec.origin or "tfserve-bench")}
    if flavour == "cpu-optimized":
        buildargs["TF_SERVING_BUILD_OPTIONS"] = build_options(spec)
    if flavour == "embedded":
        buildargs["PYTHON_BASE"] = spec.serving.python_base_image
    elif spec.serving.base_image:
        buildargs["TF_SERVING_BASE"] = spec.serving.base_image
    return BuildPlan(image_tag(spec, flavour, versions[-1]), buildargs,
                     "model" if flavour == "embedded" else None, versions, version)


def identity_of(engine, image) -> dict:
    """What a model image really runs, from labels: its base image (reference and id) and whether the server is
    TF Serving or ours (our server's images, and any stand-in built on them, carry LABEL_SERVER)."""
    labels = image.labels or {}
    base = labels.get(docker_client.LABEL_BASE_IMAGE)
    base_id = None
    if base:
        try:
            base_id = engine.images.get(base).id
        except docker_client.errors().ImageNotFound:
            pass
    ours = labels.get(docker_client.LABEL_SERVER) == "embedded"
    return {"server": OUR_SERVER if ours else docker_client.TF_SERVING, "base_image": base,
            "base_image_id": base_id}


def container_name(spec: Spec) -> str:
    return f"tfsb-{spec.name.lower()}-{spec.serving.rest_port}"


def run_arguments(spec: Spec, tag: str) -> dict:
    """keyword arguments of engine.containers.run for the spec: ports or host network, GPU, env, labels, and the
    hardening (read-only root filesystem, tmpfs /tmp, no capabilities, no-new-privileges)."""
    serving = spec.serving
    arguments = {
        "image": tag, "name": container_name(spec), "detach": True,
        "labels": docker_client.labels_for(spec.name, serving.rest_port, str(spec.origin or "")),
        "environment": {"MODEL_NAME": spec.name}, "command": [],
        **HARDENING,
    }
    if serving.network == "host":
        arguments["network_mode"] = "host"
        # TF Serving's entrypoint puts 8500/8501 first; later flags win, so the spec's ports apply
        arguments["command"] = [f"--port={serving.grpc_port}", f"--rest_api_port={serving.rest_port}"]
        arguments["environment"].update({"REST_PORT": str(serving.rest_port), "SERVER_HOST": serving.host})
    else:
        arguments["ports"] = {f"{CONTAINER_PORTS[0]}/tcp": (serving.host, serving.grpc_port),
                              f"{CONTAINER_PORTS[1]}/tcp": (serving.host, serving.rest_port)}
    if serving.image == "gpu":
        arguments["device_requests"] = docker_client.gpu_device_requests()
    return arguments


class DockerDeployment(Deployment):
    """The spec's model in a container built from dockerfiles/Dockerfile.<serving.image>."""

    backend = "docker"

    def __init__(self, spec: Spec, log: Callable[[str], None] = print):
        super().__init__(spec, log)
        self.name = container_name(spec)
        self.tag: Optional[str] = None
        self.serving_version: Optional[str] = None
        self._engine = None
        self._built: Optional[str] = None  # the tag prepare built, for the next start

    @property
    def engine(self):
        if self._engine is None:
            self._engine = docker_client.client()
        return self._engine

    @property
    @docker_client.translated
    def image(self) -> str:
        """The image tag: the one built, else the running container's (deployed by an earlier command)."""
        if self.tag is None:
            container = self._container()
            if container is not None:
                self.tag = (container.image.tags or [container.image.short_id])[0]
                self.serving_version = container.image.labels.get("tfserve-bench.tf-serving-version")
        return self.tag or f"tfserve-bench/{self.spec.name.lower()}:{self.spec.serving.image}"

    @property
    @docker_client.translated
    def server_identity(self) -> dict:
        """The server kind and base image of the image built (or of the running container's)."""
        container = self._container()
        image = container.image if container is not None else self.engine.images.get(self.image)
        return identity_of(self.engine, image)

    def _container(self):
        errors = docker_client.errors()
        try:
            return self.engine.containers.get(self.name)
        except errors.NotFound:
            return None

    @property
    @docker_client.translated
    def server_pid(self) -> Optional[int]:
        container = self._container()
        return (container.attrs.get("State", {}).get("Pid") or None) if container else None

    @docker_client.translated
    def preflight(self) -> None:
        """Before any long step: the engine answers, and the spec's ports can be reached from a container."""
        engine = self.engine  # DeployError naming the engine tried when none answers
        if self.spec.serving.network != "host" and not engine.networks.list(names=["bridge"]):
            raise DeployError(f"serving.network: {self.spec.serving.network}: a container's ports "
                              f"{', '.join(map(str, CONTAINER_PORTS))} are not published on {self.spec.serving.host} "
                              "by this engine: it has no bridge network (dockerd runs with --bridge=none?). Set "
                              f"serving.network: host in {self.spec.where('serving', 'network')} (the container "
                              "shares the host's network and listens on the spec's ports)")

    @docker_client.translated
    def build_image(self) -> str:
        """Prepare the context and build the image; returns its tag."""
        plan = build_plan(self.spec, self.log)
        self.serving_version = plan.serving_version
        labels = docker_client.labels_for(self.spec.name, self.spec.serving.rest_port, str(self.spec.origin or ""))
        with tempfile.TemporaryDirectory(prefix="tfsb-context-") as tmp:
            context = prepare_context(self.spec, self.spec.serving.image, Path(tmp) / "context", plan.versions,
                                      self.log)
            self.tag = build(self.engine, context, plan.tag, plan.buildargs, labels, target=plan.target, log=self.log)
        return self.tag

    def prepare(self) -> None:
        """Build the image now, so start only runs it (a cold start then times the container, not the build)."""
        self._built = self.build_image()

    @docker_client.translated
    def memory_bytes(self) -> Optional[int]:
        """The container's memory as the engine reports it (usage less inactive page cache), or None."""
        container = self._container()
        if container is None or container.status != "running":
            return None
        stats = self.engine.api.stats(container.id, stream=False, one_shot=True).get("memory_stats") or {}
        usage = stats.get("usage")
        if usage is None:
            return None
        details = stats.get("stats") or {}
        return int(usage - details.get("inactive_file", details.get("total_inactive_file", 0)))

    @docker_client.translated
    def start(self) -> None:
        """Build (unless prepare did), replace an exited container of the same name, and run. Cleans up if run
        fails."""
        errors = docker_client.errors()
        tag, self._built = self._built or self.build_image(), None
        old = self._container()
        if old is not None:
            old.remove(force=True)
        arguments = run_arguments(self.spec, tag)
        if self.mounts:
            arguments["volumes"] = {str(Path(host).resolve()): {"bind": f"/models/{name}", "mode": "ro"}
                                    for name, host in self.mounts.items()}
        try:
            container = self.engine.containers.run(**arguments)
        except errors.APIError as exc:
            leftover = self._container()
            if leftover is not None:
                leftover.remove(force=True)
            raise DeployError(f"docker run of {tag} failed: {exc.explanation or exc}") from None
        self.log(f"container {container.name} ({container.short_id}) from {tag} ({FLAVOURS[self.spec.serving.image]})")
        problem = self._network_problem(container)
        if problem:
            container.remove(force=True)
            raise DeployError(problem)

    def _network_problem(self, container) -> Optional[str]:
        """Why the started container cannot be reached on the spec's ports, or None: checked at once, so a
        missing bridge network is one message now, not a readiness timeout later."""
        serving = self.spec.serving
        if serving.network == "host":
            return None
        container.reload()
        bound = container.attrs.get("NetworkSettings", {}).get("Ports") or {}
        missing = [port for port in CONTAINER_PORTS if not bound.get(f"{port}/tcp")]
        if not missing:
            return None
        bridges = [network.name for network in self.engine.networks.list(names=["bridge"])]
        why = ("this engine has no bridge network (dockerd runs with --bridge=none?), so ports cannot be published"
               if not bridges else "the engine did not publish them")
        return (f"container {self.name} started, but its ports {', '.join(map(str, missing))} are not published on "
                f"{serving.host}: {why}. Set serving.network: host in {self.spec.where('serving', 'network')} "
                "(the container shares the host's network and listens on the spec's ports)")

    @docker_client.translated
    def alive(self) -> Optional[str]:
        container = self._container()
        if container is None:
            return f"no container {self.name}"
        state = container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            return f"container {self.name} exited with status {state.get('ExitCode')}"
        return None

    @docker_client.translated
    def logs(self) -> str:
        container = self._container()
        return container.logs(tail=200).decode(errors="replace") if container else ""

    @docker_client.translated
    def stop(self, timeout_s: int = 30) -> bool:
        """Stop and remove every container of this model and port, found by label. True if one was removed."""
        found = self.engine.containers.list(all=True, filters={"label": [
            f"{docker_client.LABEL_MODEL}={self.spec.name}",
            f"{docker_client.LABEL_REST_PORT}={self.spec.serving.rest_port}"]})
        for container in found:
            if container.status == "running":
                container.stop(timeout=timeout_s)
            container.remove(force=True)
        return bool(found)


@docker_client.translated
def remove_everything() -> str:
    """Stop and remove every container, then every image, labelled as ours (what `make clean` calls)."""
    engine = docker_client.client()
    label = {"label": f"{docker_client.LABEL_MANAGED}=true"}
    containers = engine.containers.list(all=True, filters=label)
    for container in containers:
        container.remove(force=True)
    images = [image for image in engine.images.list(filters=label)
              if not any(tag.startswith(("tfserve-bench/standin-serving", "tfserve-bench/python", "tfserve-bench/debian"))
                         for tag in image.tags)]  # the offline stand-in bases are kept: they took minutes
    for image in images:
        engine.images.remove(image.id, force=True)
    return f"removed {len(containers)} container(s) and {len(images)} image(s) labelled {label['label']}"
