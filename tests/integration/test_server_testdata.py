"""The embedded server on TF Serving's own test models, called over plain HTTP and the official gRPC stubs."""
from __future__ import annotations

import http.client
import json
import re
import urllib.request
import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.apis import model_management_pb2

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(testdata):
    proc = ServerProcess("--model_name=half_plus_two",
                         f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
                         "--monitoring_config_file=" + str(testdata / "monitoring_config.txt"))
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def test_tf_serving_readme_example(server):
    status, body = server.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    assert (status, body) == (200, {"predictions": [2.5, 3.0, 4.5]})
    assert "Running gRPC ModelServer at 127.0.0.1:" in server.startup_output


def test_grpc_predict_matches_rest(server, stubs):
    predict, _ = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0], [5.0]], dtype=tf.float32))
    response = predict.Predict(request, 10)
    assert tf.make_ndarray(response.outputs["y"]).ravel().tolist() == [2.5, 3.0, 4.5]
    assert response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 123
    assert len(response.outputs["y"].float_val) == 3  # typed fields, not tensor_content, like TF Serving
    status, body = server.http("POST", "/v1/models/half_plus_two:predict", {"inputs": [[1.0], [2.0], [5.0]]})
    assert body == {"outputs": [[2.5], [3.0], [4.5]]}


def test_classify_and_regress_over_both_protocols(server, stubs):
    predict, _ = stubs
    status, body = server.http("POST", "/v1/models/half_plus_two:classify",
                               {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]})
    assert body == {"results": [[["", 2.5]], [["", 3.0]]]}
    status, body = server.http("POST", "/v1/models/half_plus_two:regress",
                               {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]})
    assert body == {"results": [2.5, 3.0]}
    example = tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[2.0]))}))
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "classify_x_to_y"
    request.input.example_list.examples.append(example)
    result = predict.Classify(request, 10)
    assert result.result.classifications[0].classes[0].score == 3.0
    assert result.model_spec.signature_name == "classify_x_to_y"
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "regress_x_to_y2"
    request.input.example_list.examples.append(example)
    assert predict.Regress(request, 10).result.regressions[0].value == 4.0  # 0.5 * 2 + 3
    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in [("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y2", "tensorflow/serving/regress")]:
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "half_plus_two", signature
    multi.input.example_list.examples.append(example)
    results = predict.MultiInference(multi, 10).results
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 4.0


def test_status_and_metadata_match_tf_serving(server, stubs, testdata):
    _, models = stubs
    status, body = server.http("GET", "/v1/models/half_plus_two")
    assert body == {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    assert models.GetModelStatus(request, 10).model_version_status[0].state == 30  # AVAILABLE
    status, body = server.http("GET", "/v1/models/half_plus_two/versions/123/metadata")
    expected = json.loads((testdata / "half_plus_two_model_metadata.json").read_text())
    assert body["metadata"] == expected["metadata"]
    assert body["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}


def _series_value(text: str, series: str) -> float:
    """The value of one exposition line (0 if the series is not there yet)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prometheus_metrics_count_requests(server, testdata):
    server.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    server.http("POST", "/v1/models/nope:predict", {"instances": [1.0]})
    _, before = server.http("GET", "/monitoring/prometheus/metrics")
    server.http("POST", "/v1/models/half_plus_two:classify",
                {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]})
    status, text = server.http("GET", "/monitoring/prometheus/metrics")
    delta = lambda series: _series_value(text, series) - _series_value(before, series)
    assert status == 200 and "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"}' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="half_plus_two",API="predict",entrypoint="REST",' \
           in text
    for api in ("Predict", "Classify"):  # the model run, by TF Serving's API names
        assert f':tensorflow:serving:runtime_latency_bucket{{model_name="half_plus_two",API="{api}",runtime="TF1",' \
               'le="+Inf"}' in text
    # 3 examples fall in the (2, 4] bucket of Exponential(1, 2, 15)
    examples = ':tensorflow:serving:request_example_counts_bucket{model="half_plus_two",le="%s"}'
    assert (delta(examples % "2"), delta(examples % "4"), delta(examples % "+Inf")) == (0, 1, 1)
    assert delta(':tensorflow:serving:request_example_count_total{model="half_plus_two"}') == 3
    runtime = ':tensorflow:serving:runtime_latency_count{model_name="half_plus_two",API="Classify",runtime="TF1"}'
    assert delta(runtime) == 1
    version = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    assert f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{version}",status="success"}} 1' in text


def _grpc_error(call, request):
    with pytest.raises(grpc.RpcError) as raised:
        call(request, 10)
    return raised.value.code(), raised.value.details()


def _predict_request(name="half_plus_two", signature="", version=None, label=None, inputs=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, value in (inputs if inputs is not None else {"x": np.array([[1.0]], np.float32)}).items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


# (REST method, path, body) -> (status, message part); gRPC request -> (code, message part)
REST_ERRORS = [
    ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/half_plus_two/versions/9:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(half_plus_two, 9)"),
    ("POST", "/v1/models/half_plus_two/labels/x:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: x"),
    ("POST", "/v1/models/half_plus_two:predict", {"signature_name": "zz", "instances": [1.0]}, 400,
     'Serving signature name: "zz" not found in signature def'),
    ("POST", "/v1/models/half_plus_two:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/half_plus_two:predict", b"{nope", 400, "JSON Parse error:"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": ["a"]}, 400,
     'JSON Value: "a" Type: String is not of expected type: float'),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [[1.0], [1.0, 2.0]]}, 400,
     "Expecting tensor size: 1 but got: 2"),
    ("POST", "/v1/models/half_plus_two:predict", {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0], "inputs": [1.0]}, 400,
     "expecting only one of 'inputs' or 'instances'"),
    ("POST", "/v1/models/half_plus_two:predict", [1, 2], 400, "Is not object"),
    ("POST", "/v1/models/half_plus_two:PREDICT", {"instances": [1.0]}, 400, "Malformed request: POST"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/half_plus_two/versions/7", None, 404, "Could not find version 7 of model half_plus_two"),
    ("DELETE", "/v1/models/half_plus_two", None, 400, "Malformed request: DELETE"),
    ("POST", "/v1/models/half_plus_two:classify", {"examples": [{"x": 1.0}]}, 400,
     "No classification inputs found in SignatureDef"),
]


@pytest.mark.parametrize("method,path,body,status,message", REST_ERRORS)
def test_rest_errors_match_tf_serving_and_leave_the_server_healthy(server, method, path, body, status, message):
    got_status, got = server.http(method, path, body)
    assert got_status == status, got
    assert message in got["error"], got
    assert server.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})[1] == {"predictions": [2.5]}


def test_rest_takes_and_writes_tf_servings_non_finite_tokens(server):
    body = b'{"instances": [NaN, Infinity, -Infinity, Inf, -Inf]}'
    # the raw text: bare NaN / Infinity tokens, as TF Serving writes them (half_plus_two keeps them non-finite)
    with urllib.request.urlopen(urllib.request.Request(server.rest + "/v1/models/half_plus_two:predict",
                                                       data=body), timeout=30) as response:
        assert response.status == 200
        raw = response.read().decode()
    assert re.sub(r"\s", "", raw) == '{"predictions":[NaN,Infinity,-Infinity,Infinity,-Infinity]}'


def test_rest_non_v1_path_is_html_404(server):
    status, text = server.http("GET", "/nothing")
    assert status == 404 and "404 Not Found" in text


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "PUT", "HEAD"])
def test_a_body_on_any_method_is_consumed_so_the_next_request_on_the_connection_is_intact(server, method):
    """Found by schemathesis: a GET with a body left the body unread and it became the next request line."""
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        connection.request(method, "/v1/models/half_plus_two", body=b'{"instances": [1.0]}',
                           headers={"Content-Type": "application/json"})
        first = connection.getresponse()
        first.read()
        assert first.status in (200, 400), first.status
        connection.request("POST", "/v1/models/half_plus_two:predict", body=b'{"instances": [1.0, 2.0]}')
        second = connection.getresponse()
        assert (second.status, json.loads(second.read())) == (200, {"predictions": [2.5, 3.0]})
    finally:
        connection.close()


GRPC_ERRORS = [
    (dict(name="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (dict(version=9), grpc.StatusCode.NOT_FOUND, "Specific(half_plus_two, 9)"),
    (dict(label="x"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: x"),
    (dict(signature="zz"), grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "zz" not found.'),
    (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    (dict(inputs={"x": np.array([[1.0]], np.float32), "z": np.array([1.0], np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature: 2!=1"),
    (dict(inputs={"z": np.array([1.0], np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
     "Signature input alias: x(feed name: x:0) not found in request"),
    (dict(inputs={"x": np.array([[1]], np.int32)}), grpc.StatusCode.INVALID_ARGUMENT, "int32"),
]


@pytest.mark.parametrize("kwargs,code,message", GRPC_ERRORS)
def test_grpc_errors_match_tf_serving(server, stubs, kwargs, code, message):
    predict, _ = stubs
    got_code, details = _grpc_error(predict.Predict, _predict_request(**kwargs))
    assert got_code == code and message in details, details
    assert tf.make_ndarray(predict.Predict(_predict_request(), 10).outputs["y"]).tolist() == [[2.5]]


def test_grpc_readiness_probe_of_the_official_test_suite(server, stubs):
    predict, _ = stubs
    code, details = _grpc_error(predict.Predict, _predict_request(name="intentionally_missing_model"))
    assert code == grpc.StatusCode.NOT_FOUND and "Servable" in details


def test_grpc_output_filter_and_metadata(server, stubs):
    predict, _ = stubs
    request = _predict_request()
    request.output_filter.append("nope")
    code, details = _grpc_error(predict.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output tensor alias not found in signature: nope" in details
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = "half_plus_two"
    response = predict.GetModelMetadata(metadata_request, 10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert sig_map.signature_def["serving_default"].inputs["x"].name == "x:0"
    assert response.model_spec.version.value == 123


@pytest.mark.parametrize("model,expected", [("saved_model_half_plus_three", [3.5, 4.0, 5.5]),
                                            ("saved_model_half_plus_two_tf2_cpu", [2.5, 3.0, 4.5]),
                                            ("saved_model_half_plus_two_2_versions", [2.5, 3.0, 4.5])])
def test_every_cpu_testdata_model_serves(testdata, model, expected):
    proc = ServerProcess("--model_name=m", f"--model_base_path={testdata / model}")
    try:
        status, body = proc.http("POST", "/v1/models/m:predict", {"instances": [1.0, 2.0, 5.0]})
        assert status == 200 and body == {"predictions": expected}
        if model.endswith("2_versions"):
            assert proc.http("GET", "/v1/models/m")[1]["model_version_status"][0]["version"] == "124"
    finally:
        assert proc.stop() == 0


def test_versions_hot_load_and_failed_version_keeps_previous_serving(testdata, tmp_path):
    base = tmp_path / "m"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    proc = ServerProcess("--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1",
                         "--max_num_load_retries=0")
    try:
        shutil.copytree(testdata / "saved_model_half_plus_three" / "00000123", base / "2")
        versions = _wait_for(proc, lambda s: [(v["version"], v["state"]) for v in s] == [("2", "AVAILABLE"),
                                                                                        ("1", "END")])
        assert versions
        assert proc.http("POST", "/v1/models/m:predict", {"instances": [1.0]})[1] == {"predictions": [3.5]}
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"corrupt")
        status = _wait_for(proc, lambda s: s[0]["version"] == "3" and s[0]["state"] == "END")
        assert status[0]["status"]["error_code"] != "OK" and status[0]["status"]["error_message"]
        assert proc.http("POST", "/v1/models/m:predict", {"instances": [1.0]})[1] == {"predictions": [3.5]}
    finally:
        assert proc.stop() == 0


def _wait_for(proc, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = proc.http("GET", "/v1/models/m")[1]["model_version_status"]
        if predicate(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"condition not reached; last status {status}\n{proc.logs()[-2000:]}")


def test_model_config_file_labels_and_reload(testdata, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: 'two' base_path: '{testdata / "saved_model_half_plus_two_2_versions"}' model_platform: 'tensorflow'
           model_version_policy {{ all {{}} }} version_labels {{ key: 'stable' value: 123 }} }}
  config {{ name: 'three' base_path: '{testdata / "saved_model_half_plus_three"}' model_platform: 'tensorflow' }}
}}""")
    proc = ServerProcess(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models")
    try:
        assert proc.http("POST", "/v1/models/three:predict", {"instances": [2.0]})[1] == {"predictions": [4.0]}
        assert proc.http("POST", "/v1/models/two/labels/stable:predict", {"instances": [2.0]})[1] == \
            {"predictions": [3.0]}
        assert [v["version"] for v in proc.http("GET", "/v1/models/two")[1]["model_version_status"]] == ["124", "123"]
        reload = model_management_pb2.ReloadConfigRequest()
        entry = reload.config.model_config_list.config.add(name="three", model_platform="tensorflow")
        entry.base_path = str(testdata / "saved_model_half_plus_three")
        with grpc.insecure_channel(proc.grpc_target) as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(reload, 30)
        assert response.status.error_code == 0
        assert proc.http("POST", "/v1/models/two:predict", {"instances": [2.0]})[0] == 404
        assert proc.http("POST", "/v1/models/three:predict", {"instances": [2.0]})[1] == {"predictions": [4.0]}
    finally:
        assert proc.stop() == 0


def test_sigterm_that_the_kernel_hands_to_another_thread_still_stops_the_server(testdata):
    """A process-wide signal goes to any thread that does not block it (TF's and gRPC's threads included); the
    server must still drain and exit 0 (a main thread waiting without a timeout never saw it: CI killed it)."""
    import ctypes
    import os
    import signal

    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)
    if tgkill is None:
        pytest.skip("this libc has no tgkill() to aim a signal at one thread")
    proc = ServerProcess("--model_name=three", f"--model_base_path={testdata / 'saved_model_half_plus_three'}")
    try:
        pid = proc.proc.pid
        others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
        assert others, "the server runs no thread besides its main one"
        assert tgkill(pid, max(others), signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        proc.proc.wait(30)  # TimeoutExpired here is the defect; stop() below then kills it
    finally:
        code = proc.stop(timeout=5)
    assert code == 0
    assert "received signal 15: draining and shutting down" in proc.log_path.read_text()


def test_startup_failures_are_one_line(testdata, tmp_path):
    import subprocess
    import sys
    from tests.conftest import REPO
    # (flags, the `Failed to start server` line's status on stdout, what stderr must hold as TF Serving writes it)
    cases = [(["--model_base_path=relative/path"], "INVALID_ARGUMENT: Expected model default to have an absolute "
                                                   "path or URI; got base_path()=relative/path", ""),
             ([], "INVALID_ARGUMENT: Both server_options.model_base_path and server_options.model_config_file are "
                  "empty!", ""),
             ([f"--model_config_file={testdata / 'bad_model_config.txt'}"],
              f"INVALID_ARGUMENT: Invalid protobuf file: '{testdata / 'bad_model_config.txt'}'",
              "Error parsing text-format tensorflow.serving.ModelServerConfig"),
             (["--port=0", f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}"],
              "INVALID_ARGUMENT: At least one of server_options.grpc_port or server_options.grpc_socket_path "
              "must be set.", "")]
    for args, status, stderr in cases:
        result = subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 255, result
        assert result.stdout.strip().splitlines()[-1] == f"Failed to start server. Error: {status}", result
        assert stderr in result.stderr and "Failed to start server" not in result.stderr, result
        assert "Traceback" not in result.stdout + result.stderr, result
    bad_flag = subprocess.run([sys.executable, "-m", "server", "--port=abc"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    assert bad_flag.returncode == 255 and "Illegal value 'abc' for flag --port" in bad_flag.stdout, bad_flag
    version = subprocess.run([sys.executable, "-m", "server", "--version"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("TensorFlow ModelServer: ")
