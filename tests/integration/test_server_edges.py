"""The embedded server at its edges, as TF Serving behaves: a taken port, a UNIX socket, the gRPC health
service, and an unexpected exception inside a request (INTERNAL / 500 over both protocols, batched or not)."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, \
    prediction_service_pb2_grpc

from server.process import free_port
from server.tensors.proto import array_to_proto
from tests.conftest import REPO
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def half(testdata):
    return testdata / "saved_model_half_plus_two_cpu"


def _status(channel: grpc.Channel, name: str = "half") -> str:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    return get_model_status_pb2.ModelVersionStatus.State.Name(response.model_version_status[0].state)


def test_a_taken_grpc_port_stops_the_second_server_with_tf_servings_line(half):
    first = ServerProcess("--model_name=half", f"--model_base_path={half}")
    try:
        second = subprocess.run([sys.executable, "-m", "server", f"--port={first.grpc_port}",
                                 f"--rest_api_port={free_port()}", "--model_name=half", f"--model_base_path={half}"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 255, second
        assert second.stdout.strip().splitlines()[-1] == \
            "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server", second
        assert f"127.0.0.1:{first.grpc_port}" in second.stderr  # the log says which address
        assert "Traceback" not in second.stdout + second.stderr
        with grpc.insecure_channel(first.grpc_target) as channel:  # the first one was not disturbed
            assert _status(channel) == "AVAILABLE"
    finally:
        assert first.stop() == 0


def test_grpc_on_a_unix_socket_and_the_health_service(half, tmp_path):
    socket_path = tmp_path / "grpc.sock"
    server = ServerProcess("--model_name=half", f"--model_base_path={half}", f"--grpc_socket_path={socket_path}",
                           "--enable_grpc_healthcheck_service=true")
    try:
        assert f"Running gRPC ModelServer at UNIX socket {socket_path} ..." in server.startup_output
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            assert _status(channel) == "AVAILABLE"
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert server.stop() == 0


def test_without_the_flag_there_is_no_health_service(half):
    server = ServerProcess("--model_name=half", f"--model_base_path={half}")
    try:
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as missing:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()


class _Explodes:
    """A model run that raises what no error table knows (a bug inside a request)."""

    def __call__(self, model, signature, inputs, outputs):
        raise ZeroDivisionError("a bug inside the run")


@pytest.mark.parametrize("batched", [False, True], ids=["direct", "batched"])
def test_an_unexpected_exception_is_internal_over_both_protocols(half, batched):
    from server.batching import Batcher
    from server.configs import BatchingParameters, ModelConfig
    from server.dataplane import DataPlane
    from server.grpc_api import GrpcServer
    from server.metrics import Metrics
    from server.model import LoadOptions
    from server.repository import Repository
    from server.rest import RestApi, RestServer

    metrics = Metrics()
    repository = Repository([ModelConfig(name="half", base_path=str(half))], LoadOptions(), metrics=metrics)
    repository.start()
    runner = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=1),
                     _Explodes(), metrics) if batched else _Explodes()
    dataplane = DataPlane(repository, runner, metrics)
    grpc_server = GrpcServer(dataplane, repository, metrics, "127.0.0.1", 0, 4, 1 << 26)
    rest = RestServer(RestApi(dataplane, metrics, False, None), "127.0.0.1", 0, 4, 1 << 26)
    grpc_server.start()
    rest.start()
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half"
        request.inputs["x"].CopyFrom(array_to_proto(np.array([1.0], np.float32)))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
            with pytest.raises(grpc.RpcError) as failed:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "ZeroDivisionError: a bug inside the run" in failed.value.details()
            assert _status(channel) == "AVAILABLE"  # the server goes on serving
        body = json.dumps({"instances": [1.0]}).encode()
        with pytest.raises(urllib.error.HTTPError) as http_failed:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{rest.port}/v1/models/half:predict", data=body, method="POST"), timeout=30)
        assert http_failed.value.code == 500
        assert "ZeroDivisionError: a bug inside the run" in json.loads(http_failed.value.read())["error"]
        page = metrics.render()
        assert 'request_count{model_name="half",status="INTERNAL"} 2' in page
    finally:
        rest.stop()
        grpc_server.stop(1)
        if batched:
            runner.stop()
        repository.stop()


def test_a_port_taken_between_choosing_and_binding_is_retried_on_new_ports(half, monkeypatch):
    import socket

    from server import process

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    chosen = iter([taken, free_port()])  # the first gRPC port is taken by another process meanwhile
    monkeypatch.setattr(process, "free_port", lambda host="127.0.0.1": next(chosen, None) or free_port())
    try:
        server = ServerProcess("--model_name=half", f"--model_base_path={half}")
        try:
            assert server.grpc_port != taken  # it failed on the taken port (no SO_REUSEPORT) and started anew
            with grpc.insecure_channel(server.grpc_target) as channel:
                assert _status(channel) == "AVAILABLE"
        finally:
            assert server.stop() == 0
    finally:
        holder.close()


def test_an_image_tensor_of_the_wrong_rank_is_400_not_a_crash(digits_export):
    """oneDNN's convolution aborts the process on a rank-3 image batch; the server refuses it first."""
    _, version_dir = digits_export
    server = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}")
    try:
        rank3 = np.zeros((1, 32, 32), np.float32).tolist()
        for body in ({"signature_name": "predict_tensor", "instances": rank3},
                     {"signature_name": "predict_tensor", "inputs": rank3[0]}):
            status, answer = server.http("POST", "/v1/models/digits_cnn:predict", body)
            assert status == 400 and "for an input of rank 4 [-1,32,32,1]" in answer["error"], answer
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "digits_cnn", "predict_tensor"
        request.inputs["images"].CopyFrom(array_to_proto(np.zeros((2, 32, 32), np.float32)))
        with grpc.insecure_channel(server.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        good = {"signature_name": "predict_tensor", "instances": np.zeros((1, 32, 32, 1), np.float32).tolist()}
        assert server.http("POST", "/v1/models/digits_cnn:predict", good)[0] == 200  # still serving
    finally:
        assert server.stop() == 0  # never aborted


def test_the_server_imports_tensorflow_without_keras_and_keras_still_comes_when_asked():
    """server/tfimport.py: TensorFlow as if Keras were not installed (and so without scikit-learn), then Keras
    importable as usual, for an op library such as TF Text that uses tf.keras."""
    script = (
        "import sys\n"
        "from server.tfimport import import_tensorflow\n"
        "tf = import_tensorflow()\n"
        "assert 'keras' not in sys.modules and 'sklearn' not in sys.modules, sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('keras', 'sklearn'))[:5]\n"
        "assert import_tensorflow() is tf\n"
        "graph = tf.Graph()\n"
        "with graph.as_default():\n"
        "    total = tf.constant(2.0) + tf.constant(3.0)\n"
        "assert tf.compat.v1.Session(graph=graph).run(total) == 5.0\n"
        "import keras\n"
        "assert tf.keras.layers.Dense is keras.layers.Dense\n"
        "print('ok', keras.__version__)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr[-2000:]


def test_a_readiness_wait_asks_both_protocols_without_importing_tensorflow(half):
    """deploy.waiting's gRPC GetModelStatus goes through loadtests.drive.wire, so `make deploy` and `make status`
    do not pay TensorFlow's import the moment a model becomes available."""
    server = ServerProcess("--model_name=half", f"--model_base_path={half}")
    try:
        script = ("import sys, grpc\n"
                  "from deploy.waiting import Endpoints, grpc_status, version_states, wait_ready\n"
                  f"endpoints = Endpoints('127.0.0.1', {server.rest_port}, {server.grpc_port}, 'half')\n"
                  "wait_ready(endpoints, 60)\n"
                  "with grpc.insecure_channel(endpoints.grpc_target) as channel:\n"
                  "    print(version_states(channel, 'half'))\n"
                  "print(grpc_status(Endpoints('127.0.0.1', endpoints.rest_port, endpoints.grpc_port, 'nope')))\n"
                  "print('tensorflow' in sys.modules)\n")
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    states, missing, tensorflow = result.stdout.strip().splitlines()
    assert states == "{123: 'AVAILABLE'}" and tensorflow == "False", result.stdout
    assert missing.startswith("NOT_FOUND: "), missing
