"""Offline stand-ins for the images this machine cannot pull, built once and reused (by tag and source hash):

  tfserve-bench/debian:bookworm     debootstrap --variant=minbase bookworm, then `docker import`
  tfserve-bench/python:3.11         + Debian's python3 and python3-venv (apt over http)
  tfserve-bench/standin-serving:<version>
                                    Dockerfile.embedded's `server` stage on that Python: our embedded server as
                                    /usr/bin/tensorflow_model_server with TF Serving's entrypoint conventions,
                                    labelled tfserve-bench.server=embedded

so the real dockerfiles/Dockerfile.cpu builds unchanged on top of it (serving.base_image names it). It is never
tagged tensorflow/serving: a later real deploy on the same engine must not measure our server as TF Serving, and
the report says which server ran (from the label). Nothing here is used outside the tests.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import REPO

DEBIAN = "tfserve-bench/debian:bookworm"
PYTHON = "tfserve-bench/python:3.11"
STANDIN = "tfserve-bench/standin-serving"
SOURCE_LABEL = "tfserve-bench.standin-source"
PYTHON_DOCKERFILE = f"""FROM {DEBIAN}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/*
"""


def _has(engine, tag: str, source: str = "") -> bool:
    from docker.errors import ImageNotFound
    try:
        image = engine.images.get(tag)
    except ImageNotFound:
        return False
    return not source or image.labels.get(SOURCE_LABEL) == source


def debian_base(engine, log=print) -> str:
    if _has(engine, DEBIAN):
        return DEBIAN
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap; .ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="tfsb-rootfs-") as tmp:
        root, tar = Path(tmp) / "root", Path(tmp) / "root.tar"
        log("debootstrap --variant=minbase bookworm (about a minute)")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
                       check=True, capture_output=True)
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        repository, tag = DEBIAN.split(":")
        engine.api.import_image(src=str(tar), repository=repository, tag=tag)
    return DEBIAN


def python_base(engine, log=print) -> str:
    debian_base(engine, log)
    if _has(engine, PYTHON):
        return PYTHON
    log(f"building {PYTHON} (Debian's python3)")
    engine.images.build(fileobj=io.BytesIO(PYTHON_DOCKERFILE.encode()), tag=PYTHON, network_mode="host",
                                    rm=True)
    return PYTHON


def _server_hash() -> str:
    digest = hashlib.sha256()
    files = sorted((REPO / "server").rglob("*.py")) + [REPO / "dockerfiles" / "Dockerfile.embedded",
                                                                 REPO / "dockerfiles" / "requirements-server.txt"]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def tf_serving(engine, version: str, log=print) -> str:
    """tfserve-bench/standin-serving:<version>, the stand-in: rebuilt whenever the server's sources change."""
    tag = f"{STANDIN}:{version}"
    source = _server_hash()
    if _has(engine, tag, source):
        return tag
    # test workers share one engine: the first builds, the others wait for it instead of building the same again
    with open(Path(tempfile.gettempdir()) / "tfsb-standin.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _has(engine, tag, source):
            _build(engine, tag, source, log)
    return tag


def _build(engine, tag: str, source: str, log) -> None:
    from deploy.images import DOCKERFILES, add_server_sources, build

    python_base(engine, log)
    with tempfile.TemporaryDirectory(prefix="tfsb-standin-") as tmp:
        context = Path(tmp)
        add_server_sources(context, log)
        shutil.copy2(DOCKERFILES / "Dockerfile.embedded", context / "Dockerfile")
        build(engine, context, tag, {"PYTHON_BASE": PYTHON}, {SOURCE_LABEL: source, "tfserve-bench.managed": "true"},
              target="server", log=log)


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
