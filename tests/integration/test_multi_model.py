"""Several models behind one server, from a spec that lists them (serving.also_serve), on the embedded backend;
and Ctrl-C during make deploy leaving no server behind."""
from __future__ import annotations

import json
import urllib.request

import grpc
import pytest

from tests.conftest import interruptible, run_cli, write_spec
from tests.serverproc import free_port

pytestmark = pytest.mark.slow


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_deploy_serves_every_listed_model_over_rest_and_grpc(tmp_path, digits_export, testdata):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    import tensorflow as tf

    _, version_dir = digits_export
    write_spec(tmp_path, "specs/half_plus_two.yaml", **{
        "model.source.path": str(testdata / "saved_model_half_plus_two_cpu" / "00000123"),
        "export.base_path": str(tmp_path / "models")})
    grpc_port, rest_port = free_port(), free_port()
    spec_path = write_spec(tmp_path, "specs/digits_and_half_plus_two.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "serving.grpc_port": grpc_port,
        "serving.rest_port": rest_port})
    up = run_cli("-m", "deploy", "up", "--spec", str(spec_path))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "exporting half_plus_two first" in up.stdout and "models: digits_cnn, half_plus_two" in up.stdout
        rest = f"http://127.0.0.1:{rest_port}/v1/models"
        assert _post(f"{rest}/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]}) == {"predictions": [2.5, 3.0, 4.5]}
        digits = _post(f"{rest}/digits_cnn:predict", {"signature_name": "predict_tensor",
                                                      "instances": [[[[0.0]] * 32] * 32]})
        assert len(digits["predictions"][0]) == 10
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            for name in ("digits_cnn", "half_plus_two"):
                status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                    model_spec={"name": name}), timeout=10)
                assert [v.state for v in status.model_version_status] == [30]  # AVAILABLE
            request = predict_pb2.PredictRequest(model_spec={"name": "half_plus_two"})
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [5.0]], dtype=tf.float32))
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
            assert tf.make_ndarray(answer.outputs["y"]).ravel().tolist() == [2.5, 4.5]
        status = run_cli("-m", "deploy", "status", "--spec", str(spec_path))
        assert status.returncode == 0 and "also serves half_plus_two: AVAILABLE" in status.stdout, status.stdout
    finally:
        down = run_cli("-m", "deploy", "down", "--spec", str(spec_path))
    assert down.returncode == 0 and "stopped" in down.stdout


def test_ctrl_c_during_deploy_leaves_no_server_behind(tmp_path, digits_export):
    import signal
    import time
    from pathlib import Path

    from deploy.embedded import EmbeddedDeployment
    from spec.loader import load_spec

    _, version_dir = digits_export
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "serving.grpc_port": free_port(),
        "serving.rest_port": free_port()})
    deployment = EmbeddedDeployment(load_spec(spec_path))
    with interruptible("-m", "deploy", "up", "--spec", str(spec_path), cleanup=deployment.stop) as proc:
        line = ""
        while "starting digits_cnn" not in line:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        deadline = time.monotonic() + 30
        while deployment.pid() is None and time.monotonic() < deadline:  # the server process exists, not yet ready
            time.sleep(0.05)
        server_pid = deployment.pid()
        assert server_pid
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert deployment.pid() is None
    status = Path(f"/proc/{server_pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # gone (or a zombie awaiting its reaper)
