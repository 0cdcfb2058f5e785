"""The embedded server on a model our exporter wrote: REST and gRPC agree with each other and in-process."""
from __future__ import annotations

import base64
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from server.model import LoadedModel
from exporter.builtin_models import digits_uint8
from exporter.images import encode
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_pngs():
    _, _, test_x, test_y = digits_uint8(seed=0)
    return [encode(image[..., np.newaxis], "png") for image in test_x[:8]], test_y[:8]


@pytest.fixture(scope="module")
def server(digits_export, testdata):
    _, version_dir = digits_export
    proc = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}",
                         "--max_request_bytes=2000000", f"--monitoring_config_file={testdata / 'monitoring_config.txt'}")
    yield proc
    assert proc.stop() == 0


def _grpc_predict(target, name, signature, alias, array, dtype):
    with grpc.insecure_channel(target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = name, signature
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)


def test_warmup_records_replayed_at_load(server, digits_export):
    assert "Number of warmup records read: 1" in server.logs()
    _, text = server.http("GET", "/monitoring/prometheus/metrics")
    path = digits_export[1]
    assert f':tensorflow:serving:model_warmup_latency_count{{model_path="{path}",status="OK"}} 1' in text
    assert f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{path}",status="success"}} 1' in text
    latency = re.search(rf':tensorflow:cc:saved_model:load_latency{{model_path="{path}"}} (\d+)', text)
    assert latency and int(latency.group(1)) > 0


def test_image_bytes_rest_b64_grpc_bytes_and_in_process_agree(server, digits_pngs, digits_export):
    pngs, labels = digits_pngs
    status, body = server.http("POST", "/v1/models/digits_cnn:predict",
                               {"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs]})
    assert status == 200, body
    rest = np.array(body["predictions"], dtype=np.float32)
    response = _grpc_predict(server.grpc_target, "digits_cnn", "serving_default", "image_bytes", pngs, tf.string)
    via_grpc = tf.make_ndarray(response.outputs["probabilities"])
    model = LoadedModel.load(digits_export[1])
    local = model.run(model.signatures["serving_default"], {"image_bytes": np.array(pngs, dtype=object)},
                      ["probabilities"])["probabilities"]
    model.close()
    np.testing.assert_allclose(rest, via_grpc, atol=1e-6)
    np.testing.assert_allclose(via_grpc, local, atol=1e-6)
    assert (rest.argmax(axis=1) == labels).mean() >= 0.75


def test_tensor_signature_fast_json_path_equals_grpc_tensor_content(server, digits_pngs):
    rng = np.random.default_rng(0)
    images = rng.random((3, 32, 32, 1), dtype=np.float32)
    body = json.dumps({"signature_name": "predict_tensor", "instances": images.tolist()}).encode()
    assert len(body) > 16 * 1024  # large enough for the simdjson path
    status, rest = server.http("POST", "/v1/models/digits_cnn:predict", body)
    assert status == 200, rest
    response = _grpc_predict(server.grpc_target, "digits_cnn", "predict_tensor", "images", images, tf.float32)
    np.testing.assert_allclose(np.array(rest["predictions"], np.float32),
                               tf.make_ndarray(response.outputs["probabilities"]), atol=1e-6)
    ragged = body.replace(b"]], [[", b"], [", 1)
    status, error = server.http("POST", "/v1/models/digits_cnn:predict", ragged)
    assert status == 400 and ("Expecting" in error["error"] or "unexpected size" in error["error"]), error


def test_classify_with_b64_examples_over_rest(server, digits_pngs):
    pngs, labels = digits_pngs
    status, body = server.http("POST", "/v1/models/digits_cnn:classify", {
        "signature_name": "classify",
        "examples": [{"image/encoded": {"b64": base64.b64encode(p).decode()}} for p in pngs[:2]]})
    assert status == 200, body
    assert len(body["results"]) == 2 and len(body["results"][0]) == 3
    assert all(isinstance(label, str) and 0 <= score <= 1 for label, score in body["results"][0])


def test_non_image_bytes_are_invalid_argument_on_both_protocols(server):
    status, body = server.http("POST", "/v1/models/digits_cnn:predict",
                               {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]})
    assert status == 400 and body["error"], body
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_predict(server.grpc_target, "digits_cnn", "serving_default", "image_bytes", [b"not an image"], tf.string)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, body = server.http("POST", "/v1/models/digits_cnn:predict", {"instances": [{"b64": "%%%"}]})
    assert status == 400 and "Unable to base64 decode" in body["error"]


def test_oversized_requests_are_413_and_resource_exhausted(server, digits_pngs):
    huge = b"x" * 2_500_000
    status, body = server.http("POST", "/v1/models/digits_cnn:predict", huge)
    assert status == 413 and "exceeds the limit" in body["error"]
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_predict(server.grpc_target, "digits_cnn", "serving_default", "image_bytes", [huge], tf.string)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    pngs, _ = digits_pngs
    status, _ = server.http("POST", "/v1/models/digits_cnn:predict",
                            {"instances": [{"b64": base64.b64encode(pngs[0]).decode()}]})
    assert status == 200


def test_batching_merges_concurrent_requests_and_splits_results_exactly(digits_export, digits_pngs, tmp_path,
                                                                         testdata):
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n"
                      "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"
                      "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    proc = ServerProcess("--model_name=digits_cnn", f"--model_base_path={digits_export[1].parent}",
                         "--enable_batching", f"--batching_parameters_file={params}", "--enable_model_warmup=false",
                         f"--monitoring_config_file={testdata / 'monitoring_config.txt'}")
    pngs, _ = digits_pngs
    try:
        single = {i: tf.make_ndarray(_grpc_predict(proc.grpc_target, "digits_cnn", "serving_default",
                                                   "image_bytes", [p], tf.string).outputs["probabilities"])
                  for i, p in enumerate(pngs)}
        with ThreadPoolExecutor(8) as pool:
            futures = {i: pool.submit(_grpc_predict, proc.grpc_target, "digits_cnn", "serving_default",
                                      "image_bytes", [pngs[i % 8]] * (1 + i % 3), tf.string) for i in range(24)}
            for i, future in futures.items():
                got = tf.make_ndarray(future.result().outputs["probabilities"])
                assert got.shape == (1 + i % 3, 10)
                np.testing.assert_allclose(got, np.repeat(single[i % 8], 1 + i % 3, axis=0), atol=1e-6)
        with pytest.raises(grpc.RpcError) as raised:
            _grpc_predict(proc.grpc_target, "digits_cnn", "serving_default", "image_bytes", [pngs[0]] * 9, tf.string)
        assert "Task size 9 is larger than maximum input batch size 8" in raised.value.details()
        _, text = proc.http("GET", "/monitoring/prometheus/metrics")
        # 8 requests one at a time, then 24 from 8 threads: every request queued once, fewer runs than requests
        queued = ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name="batch_threads"} 32'
        assert queued in text
        runs = int(re.search(r":tensorflow:serving:batching_session:wrapped_run_count{} (\d+)", text).group(1))
        assert 8 < runs < 32, runs
    finally:
        assert proc.stop() == 0


def test_sigterm_drains_in_flight_requests_and_exits_zero(digits_export, digits_pngs):
    proc = ServerProcess("--model_name=digits_cnn", f"--model_base_path={digits_export[1].parent}")
    pngs, _ = digits_pngs
    body = {"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs * 32]}
    results = []

    def call():
        results.append(proc.http("POST", "/v1/models/digits_cnn:predict", body)[0])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    proc.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert proc.stop() == 0
    assert results and all(status == 200 for status in results), results
