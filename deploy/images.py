"""Model images: the build context for a spec (models, configs, flags) and the streamed `docker build`.

The context is a directory the Dockerfiles in dockerfiles/ expect:
  Dockerfile, serve.sh, models/<name>/<version>/..., config/{models,monitoring,batching}.config, config/server.flags
and, for the embedded image, requirements-server.txt, wheels/ (downloaded on the host: builds need no PyPI)
and server/ (our server's sources).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from deploy import docker_client
from deploy.base import DeployError
from deploy.embedded import STATE_DIR
from deploy.serving_config import ServerLayout, server_flags, write_configs
from exporter.export import existing_versions
from spec.resources import package_dir
from spec.schema import Spec

DOCKERFILES = package_dir("dockerfiles")  # package data: the top-level dockerfiles/ folder
FLAVOURS = {"cpu": "Dockerfile.cpu", "gpu": "Dockerfile.gpu", "cpu-optimized": "Dockerfile.cpu-optimized",
            "embedded": "Dockerfile.embedded"}
CONTAINER_PORTS = (8500, 8501)  # gRPC, REST: TF Serving's, inside the container
# TF Serving writes nothing at run time (models, configs and its entrypoint are read, logs go to stdout), so the
# root filesystem is read-only; /tmp is a small tmpfs for anything a filesystem plugin or bash may need. No
# capabilities (the ports are above 1024, the user is uid 1000) and no privilege gain through setuid binaries.
# `docker run` keyword arguments; deploy/manifests.py writes the same settings for compose and Kubernetes.
TMP_SIZE_MB = 64
HARDENING = {"read_only": True, "tmpfs": {"/tmp": f"rw,noexec,nosuid,size={TMP_SIZE_MB}m"}, "cap_drop": ["ALL"],
             "security_opt": ["no-new-privileges"]}
CPU_FLAG_OPTIONS = {"avx": "--copt=-mavx", "avx2": "--copt=-mavx2", "fma": "--copt=-mfma",
                    "sse4.1": "--copt=-msse4.1", "sse4.2": "--copt=-msse4.2", "avx512f": "--copt=-mavx512f",
                    "native": "--copt=-march=native"}
WHEELS_DIR = STATE_DIR / "wheels"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split(".") if part.isdigit())


def serving_version(spec: Spec, exported_tf: Optional[str], warn: Callable[[str], None]) -> str:
    """The TF Serving version: the spec's, else the TensorFlow that exported the model (warns when older)."""
    wanted = spec.serving.tf_serving_version
    if wanted is None:
        if exported_tf is None:
            from importlib.metadata import version
            exported_tf = version("tensorflow")
        return exported_tf
    if exported_tf and _version_tuple(wanted) < _version_tuple(exported_tf):
        warn(f"warning: {spec.where('serving', 'tf_serving_version')}: serving.tf_serving_version {wanted} is older "
             f"than TensorFlow {exported_tf}, which exported the model; ops added since may fail to load")
    return wanted


def build_options(spec: Spec) -> str:
    """bazel options for Dockerfile.cpu-optimized from serving.cpu_flags."""
    return " ".join(["--config=release"] + [CPU_FLAG_OPTIONS[flag] for flag in spec.serving.cpu_flags])


def image_tag(spec: Spec, flavour: str, latest_version: int) -> str:
    return f"tfserve-bench/{spec.name.lower()}:{flavour}-v{latest_version}"


def ensure_wheels(log: Callable[[str], None] = print) -> Path:
    """The server's wheels for Dockerfile.embedded, downloaded once on the host (cached by requirements hash)."""
    requirements = DOCKERFILES / "requirements-server.txt"
    stamp = WHEELS_DIR / f".done-{hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]}"
    if stamp.exists():
        return WHEELS_DIR
    log(f"downloading the embedded server's wheels into {WHEELS_DIR} (once)")
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                             "--only-binary=:all:", "-r", str(requirements), "-d", str(WHEELS_DIR)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployError(f"pip download of {requirements} failed: {result.stderr.strip()[-1500:]}")
    stamp.touch()
    return WHEELS_DIR


def _link_tree(source: Path, target: Path) -> None:
    """Copy a tree by hard links where possible (the context can hold a 600 MB TensorFlow wheel)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def prepare_context(spec: Spec, flavour: str, directory: Path, versions: list[int],
                    log: Callable[[str], None] = print) -> Path:
    """Fill `directory` with everything `FLAVOURS[flavour]` copies; returns it."""
    if directory.exists():
        shutil.rmtree(directory)

    for served in spec.served:  # the spec's model (the given versions), then serving.also_serve's (all exported)
        chosen = versions if served is spec else existing_versions(served.model_dir)
        if not chosen:
            raise DeployError(f"no exported version of {served.name} (serving.also_serve) under {served.model_dir}: "
                              f"run make export SPEC={served.origin}")
        (directory / "models" / served.name).mkdir(parents=True)
        for version in chosen:
            _link_tree(served.model_dir / str(version), directory / "models" / served.name / str(version))
    layout = ServerLayout.in_image(spec)
    write_configs(spec, directory / "config", layout)
    flags = [flag for flag in server_flags(spec, layout, embedded=flavour == "embedded", ports=CONTAINER_PORTS)
             if not flag.startswith("--host=")]  # inside a container the image decides where to listen
    (directory / "config" / "server.flags").write_text("# baked-in tensorflow_model_server flags\n"
                                                       + "\n".join(flags) + "\n")
    shutil.copy2(DOCKERFILES / "serve.sh", directory / "serve.sh")
    shutil.copy2(DOCKERFILES / FLAVOURS[flavour], directory / "Dockerfile")
    if flavour == "embedded":
        add_server_sources(directory, log)
    return directory


def add_server_sources(directory: Path, log: Callable[[str], None] = print) -> None:
    """What the `server` stage of Dockerfile.embedded copies: requirements, wheels, server sources."""
    shutil.copy2(DOCKERFILES / "requirements-server.txt", directory / "requirements-server.txt")
    _link_tree(ensure_wheels(log), directory / "wheels")
    shutil.copytree(package_dir("server"), directory / "server" / "server",
                    ignore=shutil.ignore_patterns("__pycache__"))


def build(engine, context: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str],
          target: Optional[str] = None, log: Callable[[str], None] = print) -> str:
    """`docker build` with progress (each step is printed); DeployError with the last lines on failure."""
    last: list[str] = []
    log(f"building {tag} from {context / 'Dockerfile'}")
    errors = docker_client.errors()
    try:
        stream = engine.api.build(path=str(context), dockerfile="Dockerfile", tag=tag, buildargs=buildargs,
                                  labels=labels, target=target, rm=True, forcerm=True, decode=True,
                                  network_mode="host")
        for chunk in stream:
            text = chunk.get("stream", "")
            for line in text.splitlines():
                if line.strip():
                    last = (last + [line.rstrip()])[-25:]
                    if line.startswith("Step "):
                        log(f"  {line.strip()}")
            if "error" in chunk:
                raise DeployError(f"docker build of {tag} failed: {chunk['error'].strip()}\nlast build lines:\n"
                                  + "\n".join(last))
    except errors.APIError as exc:
        raise DeployError(f"docker build of {tag} failed: {exc}\nlast build lines:\n" + "\n".join(last)) from None
    return tag
