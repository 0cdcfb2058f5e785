"""The tensor codec (TF Serving's JSON rules, TensorProto) and the one error table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from server import errors
from server.tensors import fastpath, json_in, json_out, proto
from server.errors import ERROR_TABLE, Code, InvalidArgument, ServingError, Unimplemented


def test_every_domain_error_is_in_the_one_table_and_codes_agree():
    subclasses = set(ServingError.__subclasses__())
    assert subclasses <= set(ERROR_TABLE)
    for cls, (http, code) in ERROR_TABLE.items():
        assert cls.code == code
    assert errors.http_status(errors.NotFound("x")) == 404 and errors.grpc_code(errors.NotFound("x")) == Code.NOT_FOUND
    assert errors.http_status(errors.RequestTooLarge("x")) == 413
    assert errors.grpc_code(errors.RequestTooLarge("x")) == Code.RESOURCE_EXHAUSTED
    assert errors.http_status(errors.FailedPrecondition("x")) == 400
    assert errors.http_status(errors.Unavailable("x")) == 503


def test_float_formatting_follows_tf_serving():
    values = np.array([9000000, 999999, 0.5, 0.0003, 0.00003, 555557.5, 3, np.nan, np.inf, -np.inf, 0.1, 1 / 3],
                      np.float32)
    assert json_out._format_floats(values) == ["9e+06", "999999.0", "0.5", "0.0003", "3e-05", "555557.5", "3.0",
                                              "NaN", "Infinity", "-Infinity", "0.1", "0.333333343"]


def _reference_decimal(value, single: bool) -> str:
    """TF Serving's WriteDecimal, value by value, as the compatibility notes state it."""
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = "%.6g" % value
    if (np.float32(float(text)) if single else float(text)) != value:
        text = ("%.9g" if single else "%.17g") % value
    return text if ("." in text or "e" in text) else text + ".0"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_float_formatting_equals_the_value_by_value_rule(dtype):
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.random(500), rng.standard_normal(500) * 10.0 ** rng.integers(-40, 40, 500),
                             rng.integers(-10**6, 10**6, 200), [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 5e-324]])
    with np.errstate(over="ignore"):
        values = values.astype(dtype)
    single = dtype == np.float32
    assert json_out._format_floats(values) == [_reference_decimal(v, single) for v in values.tolist()]


def test_predictions_and_outputs_json():
    assert json.loads(json_out.predictions_json({"y": np.array([[2.5], [3.0]], np.float32)})) == \
        {"predictions": [[2.5], [3.0]]}
    two = json_out.predictions_json({"a": np.array([1, 2], np.int64), "b_bytes": np.array([b"hi", b"yo"], object)})
    assert json.loads(two) == {"predictions": [{"a": 1, "b_bytes": {"b64": "aGk="}}, {"a": 2, "b_bytes": {"b64": "eW8="}}]}
    assert json.loads(json_out.outputs_json({"s": np.array([b"x"], object)})) == {"outputs": ["x"]}
    with pytest.raises(InvalidArgument, match="inconsistent batch size"):
        json_out.predictions_json({"a": np.zeros(2), "b": np.zeros(3)})


@pytest.mark.parametrize("value,dtype,message", [
    (["x"], 1, 'JSON Value: "x" Type: String is not of expected type: float'),
    ([1.0], 3, "JSON Value: 1.0 Type: Number is not of expected type: int32"),
    ([True], 1, "JSON Value: true Type: True is not of expected type: float"),
    ([[1, 2], [3]], 1, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ([{"b64": "aGk="}], 1, "Type: Object is not of expected type: float"),
    ([1], 8, None),
])
def test_json_type_rules(value, dtype, message):
    if message is None:
        with pytest.raises(Unimplemented):
            json_in.json_to_array(value, dtype)
        return
    with pytest.raises(InvalidArgument) as raised:
        json_in.json_to_array(value, dtype)
    assert message in raised.value.message


def test_json_accepts_what_tf_serving_accepts():
    assert json_in.json_to_array([[1, 2.5]], 1).dtype == np.float32
    assert json_in.json_to_array([{"b64": "aGk="}, "plain"], 7).tolist() == [b"hi", b"plain"]
    assert json_in.json_to_array(3, 9).shape == ()
    assert np.isnan(json_in.json_to_array(json_in.loads(b"[NaN]"), 1)[0])
    assert json_in.loads(b'{"a": 1} trailing') == {"a": 1}
    with pytest.raises(InvalidArgument, match="The document is empty"):
        json_in.loads(b"  ")
    with pytest.raises(InvalidArgument, match="at offset: 0"):
        json_in.loads(b"nope")


def test_json_takes_the_short_infinity_tokens_outside_strings_only():
    parsed = json_in.loads(b'{"instances": [Inf, -Inf, Infinity, -Infinity, 1.5], "note": "Inf, -Inf \\" Inf"}')
    assert parsed["instances"][:4] == [math.inf, -math.inf, math.inf, -math.inf]
    assert parsed["note"] == 'Inf, -Inf " Inf'
    # errors after an Inf still point into the body as sent
    for body, offset in [(b'{"instances": [Inf, -Inf, xx]}', 26), (b'[Inff]', 4), (b'["Inf", Inf,]', 12),
                         (b"[1, inf]", 4)]:
        with pytest.raises(InvalidArgument, match=f"at offset: {offset}$"):
            json_in.loads(body)


def test_rows_must_share_a_shape():
    with pytest.raises(InvalidArgument, match="Expecting tensor size: 2 but got: 3"):
        json_in.rows_to_array([[1, 2], [1, 2, 3]], 1)
    with pytest.raises(InvalidArgument, match=r"Expecting shape \[2,1\] but got: \[1,2\]"):
        json_in.rows_to_array([[[1], [2]], [[1, 2]]], 1)


@pytest.mark.parametrize("shape", [(1, 40, 50, 3), (2, 3000), (5000,), (3, 7, 11, 13)])
def test_fast_path_equals_exact_path(shape):
    array = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    body = json.dumps({"instances": array.tolist(), "signature_name": "s"}).encode()
    fast = fastpath.fast_body(body)
    assert fast is not None and fast.signature_name == "s"
    np.testing.assert_array_equal(fast.array(1), json_in.rows_to_array(json.loads(body)["instances"], 1))


@pytest.mark.parametrize("instances", [
    [[1.0] * 3000, [2.0] * 2999 + [[1.0]]],          # nested deeper in one place
    [[1.0] * 3001, [2.0] * 2999],                     # same total, ragged rows
    [[1.0] * 3000, [2.0] * 2999 + [True]],            # a bool among numbers
    [[1.0] * 3000, [2.0] * 2999 + ["x"]],             # a string
])
def test_fast_path_refuses_what_only_the_exact_path_may_judge(instances):
    fast = fastpath.fast_body(json.dumps({"instances": instances}).encode())
    assert fast is None or fast.array(1) is None


def test_fast_path_int_dtype_refuses_decimals():
    body = json.dumps({"instances": [[1.5] * 5000]}).encode()
    assert fastpath.fast_body(body).array(3) is None
    ints = json.dumps({"instances": [list(range(5000))]}).encode()
    assert fastpath.fast_body(ints).array(3).tolist()[0][:3] == [0, 1, 2]


def test_tensor_proto_round_trip_and_last_value_padding():
    import tensorflow as tf

    for array in [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([b"a", b"bc"], object),
                  np.array([[1, 2]], np.int64), np.array([True, False])]:
        message = proto.array_to_proto(array)
        np.testing.assert_array_equal(proto.proto_to_array(message), array)
        np.testing.assert_array_equal(tf.make_ndarray(message), array)
    content = proto.array_to_proto(np.ones((2, 2), np.float32), as_content=True)
    assert content.tensor_content and proto.proto_to_array(content).sum() == 4
    padded = tf.make_tensor_proto([0.0], dtype=tf.float32)
    padded.float_val[:] = [1.0, 2.0]
    padded.tensor_shape.dim[0].size = 4
    assert proto.proto_to_array(padded).tolist() == [1.0, 2.0, 2.0, 2.0]


def test_tensor_protos_that_do_not_decode_are_invalid_argument():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    odd = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 5)
    with pytest.raises(InvalidArgument, match="5 bytes, not a multiple of 4"):
        proto.proto_to_array(odd)
    odd.tensor_shape.dim.append(tensor_shape_pb2.TensorShapeProto.Dim(size=1))
    with pytest.raises(InvalidArgument, match="Unable to parse tensor proto"):
        proto.proto_to_array(odd)
