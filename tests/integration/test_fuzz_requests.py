"""Generated bad requests against the embedded server on an exported model (hypothesis), over both protocols:
every answer is a valid 200 or a 4xx with TF Serving's {"error": ...} body (REST), OK or INVALID_ARGUMENT /
NOT_FOUND / RESOURCE_EXHAUSTED / FAILED_PRECONDITION (gRPC); never a 5xx, INTERNAL or UNKNOWN, never a hang, and
the next good request is answered."""
from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from exporter.builtin_models import digits_uint8
from exporter.images import encode
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow
GRPC_ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server(digits_export):
    _, version_dir = digits_export
    proc = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}",
                         "--max_request_bytes=1000000")
    yield proc
    assert proc.stop() == 0  # it never crashed, and drained cleanly


@pytest.fixture(scope="module")
def good_png():
    _, _, images, _ = digits_uint8(seed=0)
    return encode(images[0][..., np.newaxis], "png")


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 8 << 20)])
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, width=32) | \
    st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["b64", "image_bytes", "images", "x", "inputs", "instances"]) | st.text(max_size=5), c,
    max_size=3), max_leaves=20)
b64_strings = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=12)
image_like = st.builds(lambda v: {"b64": v}, b64_strings)
tensor_like = st.integers(0, 3).flatmap(lambda depth: st.recursive(
    st.floats(-2, 2, allow_nan=False, width=32) | st.text(max_size=2), lambda c: st.lists(c, min_size=0, max_size=3),
    max_leaves=12))
bodies = st.fixed_dictionaries({}, optional={
    "signature_name": st.sampled_from(["serving_default", "predict_tensor", "classify", "nope", ""]),
    "instances": st.lists(image_like | tensor_like | json_values, max_size=3) | json_values,
    "inputs": json_values | st.dictionaries(st.sampled_from(["image_bytes", "images", "zzz"]), json_values,
                                            max_size=2)})


@FUZZ
@given(body=bodies | json_values, path=st.sampled_from([":predict", ":classify", ":regress", "/versions/1:predict",
                                                        "/versions/9:predict", "/labels/x:predict"]))
def test_generated_rest_bodies_get_4xx_with_an_error_body_or_200(server, body, path):
    status, answer = server.http("POST", f"/v1/models/digits_cnn{path}", json.dumps(body).encode(), timeout=30)
    assert status == 200 or 400 <= status < 500, (status, answer, body)
    if status != 200:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"], answer


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_generated_raw_bytes_over_rest(server, raw):
    status, answer = server.http("POST", "/v1/models/digits_cnn:predict", raw, timeout=30)
    assert 400 <= status < 500 or status == 200, (status, answer, raw)


DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_STRING, types_pb2.DT_INT32, types_pb2.DT_DOUBLE, types_pb2.DT_UINT8,
          types_pb2.DT_BOOL, types_pb2.DT_INT64, types_pb2.DT_HALF, types_pb2.DT_INVALID]


@st.composite
def tensors(draw):
    tensor = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)))
    for size in draw(st.lists(st.integers(-2, 40), max_size=4)):
        tensor.tensor_shape.dim.append(tensor_shape_pb2.TensorShapeProto.Dim(size=size))
    kind = draw(st.sampled_from(["float_val", "string_val", "int_val", "tensor_content", "huge", "none"]))
    if kind == "float_val":
        tensor.float_val.extend(draw(st.lists(st.floats(width=32, allow_nan=True), max_size=50)))
    elif kind == "string_val":
        tensor.string_val.extend(draw(st.lists(st.binary(max_size=40), max_size=4)))
    elif kind == "int_val":
        tensor.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=20)))
    elif kind == "tensor_content":
        tensor.tensor_content = draw(st.binary(max_size=400))
    elif kind == "huge":  # a huge repeated field, past the server's 1 MB limit
        tensor.float_val.extend([0.5] * 400_000)
    return tensor


@FUZZ
@given(inputs=st.dictionaries(st.sampled_from(["image_bytes", "images", "x", ""]), tensors(), max_size=2),
       signature=st.sampled_from(["serving_default", "predict_tensor", "classify", "", "nope"]),
       output_filter=st.lists(st.sampled_from(["probabilities", "classes", "nope"]), max_size=2))
def test_generated_grpc_requests_never_get_internal(stub, inputs, signature, output_filter):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits_cnn"
    request.model_spec.signature_name = signature
    request.output_filter.extend(output_filter)
    for alias, tensor in inputs.items():
        request.inputs[alias].CopyFrom(tensor)
    try:
        stub.Predict(request, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert error.details(), code
    assert code in GRPC_ALLOWED, (code, request)


def test_the_server_still_answers_after_the_fuzz(server, stub, good_png):
    status, answer = server.http("POST", "/v1/models/digits_cnn:predict",
                                 {"instances": [{"b64": base64.b64encode(good_png).decode()}]})
    assert status == 200 and len(answer["predictions"][0]) == 10
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits_cnn"
    request.inputs["image_bytes"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[good_png],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
    assert stub.Predict(request, timeout=30).outputs["probabilities"].tensor_shape.dim[1].size == 10
