"""TFLite versions (model.tflite, --prefer_tflite_model) served as TF Serving serves them: same signatures, same
answers over REST and gRPC, metadata from the flatbuffer's SignatureDefs."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from server.tensors.proto import array_to_proto, proto_to_array
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tflite_half_plus_two(tmp_path_factory):
    """half_plus_two (y = x / 2 + 2) converted to TFLite, in a version directory of its own."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 0.5 + 2.0}

    base = tmp_path_factory.mktemp("tflite")
    module = HalfPlusTwo()
    tf.saved_model.save(module, str(base / "saved"), signatures={"serving_default": module.serve})
    version = base / "half" / "1"
    version.mkdir(parents=True)
    (version / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(base / "saved")).convert())
    return base / "half"


def test_a_tflite_version_is_served_over_rest_and_grpc(tflite_half_plus_two):
    server = ServerProcess("--model_name=half", f"--model_base_path={tflite_half_plus_two}",
                           "--prefer_tflite_model=true")
    try:
        assert server.http("POST", "/v1/models/half:predict", {"instances": [1.0, 2.0, 5.0]}) == \
            (200, {"predictions": [2.5, 3.0, 4.5]})
        status, metadata = server.http("GET", "/v1/models/half/metadata")
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert status == 200 and list(signature["inputs"]) == ["x"] and list(signature["outputs"]) == ["y"]
        assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half"
        request.inputs["x"].CopyFrom(array_to_proto(np.array([4.0, 6.0], np.float32)))
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            reply = stub.Predict(request, timeout=30)
            assert proto_to_array(reply.outputs["y"]).tolist() == [4.0, 5.0]
            meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=request.model_spec, metadata_field=["signature_def"]), timeout=30)
            assert meta.model_spec.version.value == 1
        status, error = server.http("POST", "/v1/models/half:predict", {"instances": ["a"]})
        assert status == 400 and "is not of expected type: float" in error["error"]  # the signature's dtype
        # the interpreter resizes its inputs, as TF Serving's TFLite session does: a [1, 2] batch runs too
        assert server.http("POST", "/v1/models/half:predict", {"instances": [[1.0, 2.0]]}) == \
            (200, {"predictions": [[2.5, 3.0]]})
    finally:
        assert server.stop() == 0


def test_without_the_flag_a_tflite_only_version_does_not_load(tflite_half_plus_two):
    server = ServerProcess("--model_name=half", f"--model_base_path={tflite_half_plus_two}",
                           "--max_num_load_retries=0")
    try:
        status, body = server.http("GET", "/v1/models/half")
        [version] = body["model_version_status"]
        assert status == 200 and version["state"] == "END"  # as TF Serving: the SavedModel loader finds no .pb
        assert "SavedModel file does not exist" in version["status"]["error_message"]
    finally:
        assert server.stop() == 0
