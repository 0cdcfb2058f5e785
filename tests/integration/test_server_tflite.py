"""TFLite versions (model.tflite, --prefer_tflite_model) served as TF Serving serves them: same signatures, same
answers over REST and gRPC, metadata from the flatbuffer's SignatureDefs, and signature maps kept only in the
flatbuffer's `signature_defs_metadata` entry (as TF Serving's own tooling writes them) read from there."""
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


def _with_signature_metadata(tflite: bytes, signature_defs: dict, renamed: dict, blob: bytes = b"") -> bytes:
    """`tflite` without its own SignatureDefs, its tensors renamed (old -> new), and `signature_defs` (key ->
    SignatureDef) stored as TF Lite's tooling stores them: a FlexBuffer map of serialized SignatureDefs in the
    metadata entry `signature_defs_metadata`."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    class Raw(bytes):  # FlexBuffers strings are bytes; the Python builder only encodes str, so hand it the bytes
        def encode(self, *_args):
            return bytes(self)

    builder = flexbuffers.Builder()
    with builder.Map():
        for key, definition in signature_defs.items():
            builder.String(key, Raw(definition.SerializeToString()))
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    model.signatureDefs = []
    for tensor in model.subgraphs[0].tensors:
        tensor.name = renamed.get(tensor.name.decode(), tensor.name.decode()).encode()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(blob or bytes(builder.Finish()), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = b"signature_defs_metadata", len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _signature(inputs: dict, outputs: dict, method="tensorflow/serving/predict"):
    from tensorflow.core.protobuf import meta_graph_pb2

    definition = meta_graph_pb2.SignatureDef(method_name=method)
    for target, names in ((definition.inputs, inputs), (definition.outputs, outputs)):
        for alias, name in names.items():
            target[alias].name, target[alias].dtype = name, 1  # DT_FLOAT
            target[alias].tensor_shape.dim.add(size=-1)
    return definition


@pytest.fixture(scope="module")
def tflite_metadata_versions(tflite_half_plus_two, tmp_path_factory):
    """half_plus_two whose signature map is only in the metadata: version 1 maps x -> tflite_input:0 and
    y -> y:0 onto tensors named `tflite_input` and `y` (a legacy converter's names, without ':0'); version 2's map
    names a tensor the graph does not have; version 3's entry is not a FlexBuffer map."""
    converted = (tflite_half_plus_two / "1" / "model.tflite").read_bytes()
    renamed = {"serving_default_x:0": "tflite_input", "PartitionedCall:0": "y"}
    base = tmp_path_factory.mktemp("tflite_metadata") / "meta"
    good = {"serving_default": _signature({"x": "tflite_input:0"}, {"y": "y:0"})}
    bad = {"serving_default": _signature({"x": "no_such_tensor:0"}, {"y": "y:0"})}
    for version, definitions, blob in ((1, good, b""), (2, bad, b""), (3, good, b"\x01\x02")):
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "model.tflite").write_bytes(
            _with_signature_metadata(converted, definitions, renamed, blob))
    return base


def test_a_signature_map_kept_only_in_the_metadata_is_served_under_its_aliases(tflite_metadata_versions):
    from tensorflow.lite.python import schema_py_generated as schema

    one = (tflite_metadata_versions / "1" / "model.tflite").read_bytes()
    assert schema.Model.GetRootAs(one, 0).SignatureDefsLength() == 0, "the flatbuffer keeps no SignatureDefs"
    config = tflite_metadata_versions.parent / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "meta" base_path: "{tflite_metadata_versions}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    server = ServerProcess(f"--model_config_file={config}", "--prefer_tflite_model=true", "--max_num_load_retries=0")
    try:
        assert server.http("POST", "/v1/models/meta/versions/1:predict", {"instances": [1.0, 2.0, 5.0]}) == \
            (200, {"predictions": [2.5, 3.0, 4.5]})
        assert server.http("POST", "/v1/models/meta/versions/1:predict", {"inputs": {"x": [6.0]}}) == \
            (200, {"outputs": [5.0]})
        status, metadata = server.http("GET", "/v1/models/meta/versions/1/metadata")
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert status == 200 and list(signature["inputs"]) == ["x"] and list(signature["outputs"]) == ["y"]
        assert signature["inputs"]["x"]["name"] == "tflite_input" and signature["outputs"]["y"]["name"] == "y"
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "meta"
        request.model_spec.version.value = 1
        request.inputs["x"].CopyFrom(array_to_proto(np.array([4.0, 6.0], np.float32)))
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert proto_to_array(reply.outputs["y"]).tolist() == [4.0, 5.0]
        status, body = server.http("GET", "/v1/models/meta")
        states = {v["version"]: v for v in body["model_version_status"]}
        assert states["1"]["state"] == "AVAILABLE" and states["2"]["state"] == "END", states
        assert "Signature input x references an unknown tensor" in states["2"]["status"]["error_message"]
        assert "no_such_tensor:0" in states["2"]["status"]["error_message"]
        assert states["3"]["state"] == "END" and states["3"]["status"]["error_code"] == "INVALID_ARGUMENT"
        assert "Invalid SignatureDefs found in TfLite model" in states["3"]["status"]["error_message"]
    finally:
        assert server.stop() == 0


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
