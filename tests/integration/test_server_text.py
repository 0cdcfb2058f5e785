"""TF Text's ops in the embedded server, as TF Serving's binary links them. A SavedModel that tokenizes with
tensorflow_text (built here: a whitespace tokenizer feeding a regression head, y = 0.5 x tokens + 2, the shape of
TF Serving's tf_text_regression test model) loads and answers over REST and gRPC; without tensorflow-text its
version ends as END with TensorFlow's "Op type not registered", as in a binary without those ops, and no
traceback."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow

SENTENCES = ["the quick brown fox", "hello", "a b c d e f g"]
EXPECTED = [0.5 * len(s.split()) + 2.0 for s in SENTENCES]  # 4.0, 2.5, 5.5


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    import tensorflow_text

    class Regression(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            tokens = tensorflow_text.WhitespaceTokenizer().tokenize(text)
            return {"y": 0.5 * tf.cast(tokens.row_lengths(), tf.float32) + 2.0}

    base = tmp_path_factory.mktemp("tf_text_regression")
    module = Regression()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    # the graph really needs a TF Text op (else this test could not fail)
    assert b"WhitespaceTokenize" in (base / "1" / "saved_model.pb").read_bytes()
    return base


def test_a_model_using_tf_text_ops_loads_and_answers_over_both_protocols(text_model):
    server = ServerProcess("--model_name=text", f"--model_base_path={text_model}")
    try:
        status, body = server.http("POST", "/v1/models/text:predict", {"instances": SENTENCES})
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], EXPECTED)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "text"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(SENTENCES))
        with grpc.insecure_channel(server.grpc_target) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), EXPECTED)
    finally:
        server.stop()


def test_without_tf_text_the_load_fails_as_tf_serving_does(text_model, tmp_path, monkeypatch):
    shim = tmp_path / "no_tf_text" / "tensorflow_text"  # an installation without tensorflow-text
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named tensorflow_text')\n")
    monkeypatch.setenv("PYTHONPATH", str(shim.parent))
    # (TF Serving retries a failed load 5 times, a minute apart, by default)
    server = ServerProcess("--model_name=text", f"--model_base_path={text_model}", "--max_num_load_retries=0")
    try:
        status, body = server.http("GET", "/v1/models/text")
        assert status == 200, body
        [version] = body["model_version_status"]
        assert version["state"] == "END", version
        said = version["status"]["error_message"]
        assert "Op type not registered 'TFText>WhitespaceTokenize" in said and "Failed to load SavedModel" in said, said
        status, body = server.http("POST", "/v1/models/text:predict", {"instances": SENTENCES})
        assert status == 404 and "text" in body["error"], body
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text(errors="replace")
