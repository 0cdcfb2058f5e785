"""--rest_api_timeout_in_ms bounds a model run: a signature that spins far longer is cancelled and answered
DEADLINE_EXCEEDED (HTTP 504 with TF Serving's {"error": ...} body, gRPC DEADLINE_EXCEEDED), the run stops, and the
next request is served."""
from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.measures]
SPINNER = """
import sys
import tensorflow as tf

class Spinner(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def spin(self, x):  # counts to x[0]: a run whose length the request chooses
        count = tf.while_loop(lambda i: i < tf.cast(x[0], tf.int64), lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
        return {"y": x * 0.0 + tf.cast(count, tf.float32)}

module = Spinner()
tf.saved_model.save(module, sys.argv[1], signatures={"serving_default": module.spin})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("spinner") / "spinner"
    built = subprocess.run([sys.executable, "-c", SPINNER, str(base / "1")], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    proc = ServerProcess("--model_name=spinner", f"--model_base_path={base}", "--rest_api_timeout_in_ms=300")
    yield proc
    assert proc.stop() == 0


def test_a_run_past_the_timeout_is_cancelled_with_deadline_exceeded_on_both_protocols(server):
    # 1e9 loop iterations take minutes: only the server's timeout can answer within the client's 60 s
    status, answer = server.http("POST", "/v1/models/spinner:predict", {"instances": [1e9]}, timeout=60)
    assert status == 504 and "Timed out" in answer["error"], (status, answer)

    channel = grpc.insecure_channel(server.grpc_target)
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "spinner"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1e9], np.float32)))
        with pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, raised.value
    finally:
        channel.close()

    # a run inside the limit is unaffected, and the cancelled ones no longer hold the server
    assert server.http("POST", "/v1/models/spinner:predict", {"instances": [10.0]}) == (200, {"predictions": [10.0]})
