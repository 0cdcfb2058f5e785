"""make deploy BACKEND=docker with a real engine: the real Dockerfile.cpu built unchanged on the offline
tensorflow/serving stand-in, and Dockerfile.embedded; predictions over REST and gRPC, a short bench, teardown that
leaves no container, and a failed deploy that leaves nothing running."""
from __future__ import annotations

import base64
import json
import os
import time
import urllib.request

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from deploy.docker_client import LABEL_MANAGED, LABEL_SPEC
from exporter.builtin_models import digits_uint8
from exporter.images import encode
from tests.conftest import run_cli, write_spec
from tests.serverproc import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _spec(tmp_path, digits_export, image: str, **overrides):
    _, version_dir = digits_export
    from importlib.metadata import version

    from tests.docker.standin import STANDIN
    values = {"serving.base_image": f"{STANDIN}:{version('tensorflow')}", "export.base_path": str(version_dir.parents[1]), "serving.backend": "docker",
              "serving.image": image, "serving.network": "host", "serving.grpc_port": free_port(),
              "serving.rest_port": free_port(), "benchmark.output_dir": str(tmp_path / "reports"),
              "benchmark.images.count": 2, "benchmark.min_duration": "0.5s", "benchmark.min_requests": 10,
              "benchmark.stability_percent": 1000}  # a 1 s window checks the docker path, not the validity rules
    values.update(overrides)
    return write_spec(tmp_path, "specs/digits_cnn.yaml", **values)


def _ours(engine, spec_path):
    """The containers a test's spec made, by the spec label every container carries: Docker tests on the other test
    worker run containers of the same model at the same time, and those are not this test's to count."""
    from spec.loader import load_spec

    origin = load_spec(spec_path).origin
    return engine.containers.list(all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_SPEC}={origin}"]})


def _predict_both(spec_path):
    from spec.loader import load_spec

    serving = load_spec(spec_path).serving
    _, _, images, labels = digits_uint8(seed=0)
    png = encode(images[0][..., np.newaxis], "png")
    body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{serving.rest_port}/v1/models/digits_cnn:predict", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        rest = np.array(json.loads(response.read())["predictions"])
    grpc_request = predict_pb2.PredictRequest()
    grpc_request.model_spec.name = "digits_cnn"
    grpc_request.inputs["image_bytes"].dtype = types_pb2.DT_STRING
    grpc_request.inputs["image_bytes"].string_val.append(png)
    grpc_request.inputs["image_bytes"].tensor_shape.dim.add(size=1)
    with grpc.insecure_channel(f"127.0.0.1:{serving.grpc_port}") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(grpc_request, timeout=30)
    tensor = reply.outputs["probabilities"]
    values = np.frombuffer(tensor.tensor_content, np.float32) if tensor.tensor_content else np.array(tensor.float_val)
    np.testing.assert_allclose(values.reshape(rest.shape), rest, atol=1e-6)
    assert rest.shape == (1, 10) and rest[0].argmax() == labels[0]


def _wait_healthy(container, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        health = container.attrs["State"].get("Health", {}).get("Status")
        if health == "healthy":
            return
        time.sleep(2)
    raise AssertionError(f"container not healthy: {container.attrs['State'].get('Health')}")


def _assert_hardened(container) -> None:
    """Read-only root filesystem (the model and configs cannot be changed from inside), a writable tmpfs /tmp,
    no capabilities, no-new-privileges: as the engine reports it and as seen from inside the container."""
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"], host
    assert "no-new-privileges" in host["SecurityOpt"] and "/tmp" in host["Tmpfs"]
    denied = container.exec_run(["/bin/sh", "-c", "touch /models/intruder"])
    assert denied.exit_code != 0 and b"Read-only file system" in denied.output, denied
    allowed = container.exec_run(["/bin/sh", "-c", "touch /tmp/scratch && rm /tmp/scratch"])
    assert allowed.exit_code == 0, allowed
    identity = container.exec_run(["/bin/sh", "-c", "id -u; grep CapEff /proc/1/status"]).output.decode()
    assert identity.split()[0] == "1000" and "0000000000000000" in identity, identity


@pytest.mark.measures  # its bench's validity is judged: it runs alone, with the other measuring tests
def test_cpu_dockerfile_deploys_serves_benchmarks_and_goes_away(tmp_path, digits_export, engine, tf_serving_standin,
                                                                 testdata):
    also = write_spec(tmp_path, "specs/half_plus_two.yaml", **{
        "model.source.path": str(testdata / "saved_model_half_plus_two_cpu" / "00000123"),
        "export.base_path": str(tmp_path / "models")})
    spec_path = _spec(tmp_path, digits_export, "cpu", **{"serving.also_serve": [str(also)]})
    up = run_cli("-m", "deploy", "up", "--spec", str(spec_path), "--backend", "docker")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "Step 1/" in up.stdout and "ready in" in up.stdout  # build progress was streamed
        assert up.stdout.count("try: curl") == 2 and "models: digits_cnn, half_plus_two" in up.stdout
        [container] = _ours(engine, spec_path)
        assert container.attrs["Config"]["User"] == "1000:1000"
        _assert_hardened(container)
        labels = container.image.labels
        assert labels["tfserve-bench.model"] == "digits_cnn" and len(labels["tfserve-bench.spec-sha256"]) == 64
        assert labels["org.opencontainers.image.source"] == str(spec_path)
        _predict_both(spec_path)
        from spec.loader import load_spec
        half = urllib.request.Request(
            f"http://127.0.0.1:{load_spec(spec_path).serving.rest_port}/v1/models/half_plus_two:predict",
            data=b'{"instances": [1.0, 2.0, 5.0]}')
        with urllib.request.urlopen(half, timeout=30) as response:  # the second model of the same container
            assert json.loads(response.read()) == {"predictions": [2.5, 3.0, 4.5]}
        _wait_healthy(container)
        again = run_cli("-m", "deploy", "up", "--spec", str(spec_path), "--backend", "docker")
        assert again.returncode == 0 and "already served" in again.stdout  # idempotent
        status = run_cli("-m", "deploy", "status", "--spec", str(spec_path), "--backend", "docker")
        assert status.returncode == 0 and "AVAILABLE" in status.stdout
        bench = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path), "--users", "1", "--duration", "1s",
                        "--warmup", "0.5s", "--payloads", "image_b64")
        assert bench.returncode in (0, 4), bench.stdout[-3000:] + bench.stderr[-3000:]
        if bench.returncode == 4:  # only a generator-bound run may make it invalid (2 cores shared with the server)
            runs = json.loads((tmp_path / "reports" / "digits_cnn" / "latest" / "summary.json").read_text())["runs"]
            assert all(reason.startswith("generator-bound") for r in runs for reason in r["invalid_reasons"])
        summary = json.loads((tmp_path / "reports" / "digits_cnn" / "latest" / "summary.json").read_text())
        assert summary["provenance"]["backend"] == "docker"
        assert summary["provenance"]["image"].startswith("tfserve-bench/digits_cnn:cpu-v")
        assert summary["provenance"]["serving_version"] and all(r["failures"] == 0 for r in summary["runs"])
        # the stand-in is our server: the report says so, with the base image's id, and never claims TF Serving
        provenance = summary["provenance"]
        assert provenance["server"] == "tfserve-bench embedded server", provenance
        assert provenance["base_image"].startswith("tfserve-bench/standin-serving:")
        assert provenance["base_image_id"] == engine.images.get(provenance["base_image"]).id
        assert "tfserve-bench embedded server" in (tmp_path / "reports" / "digits_cnn" / "latest" / "report.html"
                                                   ).read_text()
        assert not [tag for image in engine.images.list() for tag in image.tags
                    if tag.startswith("tensorflow/serving")]
        assert all((r["server_cpu_percent"] or 0) > 0 for r in summary["runs"])  # the container pid is the server
    finally:
        down = run_cli("-m", "deploy", "down", "--spec", str(spec_path), "--backend", "docker")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _ours(engine, spec_path) == []


def test_embedded_dockerfile_deploys_and_serves(tmp_path, digits_export, engine, tf_serving_standin):
    from tests.docker.standin import PYTHON
    spec_path = _spec(tmp_path, digits_export, "embedded", **{"serving.python_base_image": PYTHON})
    up = run_cli("-m", "deploy", "up", "--spec", str(spec_path), "--backend", "docker")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        _predict_both(spec_path)
        [container] = _ours(engine, spec_path)
        _assert_hardened(container)  # Python (the embedded server) runs on a read-only root too
    finally:
        run_cli("-m", "deploy", "down", "--spec", str(spec_path), "--backend", "docker")
    assert _ours(engine, spec_path) == []


def test_a_model_that_cannot_load_fails_with_its_logs_and_leaves_nothing(tmp_path, engine, tf_serving_standin):
    broken = tmp_path / "models" / "digits_cnn" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    from importlib.metadata import version

    from tests.docker.standin import STANDIN
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "serving.base_image": f"{STANDIN}:{version('tensorflow')}",
        "export.base_path": str(tmp_path / "models"), "serving.backend": "docker", "serving.network": "host",
        "serving.grpc_port": free_port(), "serving.rest_port": free_port(), "serving.readiness_timeout_s": 20})
    up = run_cli("-m", "deploy", "up", "--spec", str(spec_path))
    assert up.returncode == 2 and "Traceback" not in up.stderr
    assert "not AVAILABLE after 20s" in up.stderr and "last server log lines" in up.stderr
    assert _ours(engine, spec_path) == []


def test_no_engine_is_one_clear_line(tmp_path, digits_export):
    spec_path = _spec(tmp_path, digits_export, "cpu")
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    import subprocess
    import sys
    from tests.conftest import REPO
    result = subprocess.run([sys.executable, "-m", "deploy", "up", "--spec", str(spec_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no Docker engine reachable at unix:///nonexistent/docker.sock" in result.stderr
    assert "Traceback" not in result.stderr


def test_published_ports_without_a_bridge_network_fail_at_once(tmp_path, digits_export, engine, tf_serving_standin):
    if engine.networks.list(names=["bridge"]):
        pytest.skip("this engine has a bridge network, so published ports work here")
    spec_path = _spec(tmp_path, digits_export, "cpu", **{"serving.network": "published",
                                                          "serving.readiness_timeout_s": 600})
    import time
    started = time.monotonic()
    up = run_cli("-m", "deploy", "up", "--spec", str(spec_path))
    elapsed = time.monotonic() - started
    assert up.returncode == 2 and "Traceback" not in up.stdout + up.stderr, up.stderr
    assert "are not published" in up.stderr and "no bridge network" in up.stderr, up.stderr
    assert "serving.network: host" in up.stderr
    assert "not AVAILABLE after" not in up.stderr and elapsed < 600  # it did not wait out the readiness timeout
    assert _ours(engine, spec_path) == []
