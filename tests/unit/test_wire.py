"""loadtests.drive.wire: TF Serving's Predict messages without TensorFlow, held to TensorFlow's own descriptors and bytes,
and a load-generator process that renders and checks gRPC requests without importing TensorFlow."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from loadtests.drive import wire
from server.tensors.dtypes import DType
from server.tensors.proto import array_to_proto, proto_to_array
from tests.conftest import REPO


def _real():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
    from tensorflow_serving.apis import get_model_status_pb2, model_pb2, predict_pb2, status_pb2
    return {"tensorflow.TensorProto": tensor_pb2.TensorProto,
            "tensorflow.TensorShapeProto": tensor_shape_pb2.TensorShapeProto,
            "tensorflow.serving.ModelSpec": model_pb2.ModelSpec,
            "tensorflow.serving.PredictRequest": predict_pb2.PredictRequest,
            "tensorflow.serving.PredictResponse": predict_pb2.PredictResponse,
            "tensorflow.serving.GetModelStatusRequest": get_model_status_pb2.GetModelStatusRequest,
            "tensorflow.serving.GetModelStatusResponse": get_model_status_pb2.GetModelStatusResponse,
            "tensorflow.serving.ModelVersionStatus": get_model_status_pb2.ModelVersionStatus,
            "tensorflow.serving.StatusProto": status_pb2.StatusProto}


def _fields(descriptor, seen: frozenset = frozenset()) -> dict:
    """Every field, nested messages' fields under dotted names (a message met again is not entered again)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    varint_enum = {F.TYPE_ENUM: F.TYPE_INT32}  # both are varints on the wire; wire.py declares dtype as int32
    found = {}
    for field in descriptor.fields:
        kind = varint_enum.get(field.type, field.type)
        nested = field.message_type
        found[field.name] = (field.number, kind, field.is_repeated, field.is_packed,
                             nested.GetOptions().map_entry if nested is not None else False,
                             nested.full_name if nested is not None and not nested.GetOptions().map_entry else None)
        if nested is not None and nested.full_name not in seen:
            inner = _fields(nested, seen | {descriptor.full_name, nested.full_name})
            found.update({f"{field.name}.{k}": v for k, v in inner.items()})
    return found


@pytest.mark.parametrize("name", wire.MESSAGES)
def test_every_declared_field_has_tf_servings_number_and_type(name):
    ours, theirs = _fields(wire.descriptors()[name]), _fields(_real()[name].DESCRIPTOR)
    assert ours, name
    for field, shape in ours.items():
        assert field in theirs, f"{name}.{field} is not a field of TensorFlow's {name}"
        assert shape == theirs[field], (name, field, shape, theirs[field])
    # what is left out is only what a load generator never writes or reads
    left_out = {"resource_handle_val", "variant_val", "predict_streamed_options", "client_id", "request_options"}
    missing = {k for k in set(theirs) - set(ours) if not left_out & set(k.split("."))}
    assert not missing, missing


ARRAYS = [np.arange(6, dtype=np.float32).reshape(2, 3) / 7, np.array([[1.5, -2.25]], np.float64),
          np.array([1, -2, 3], np.int32), np.array([2 ** 40, -5], np.int64), np.array([True, False]),
          np.array([0.5, 65504.0], np.float16), np.array([b"\xff\xd8jpeg", b""], dtype=object),
          np.array([7, 2 ** 32 - 1], np.uint32), np.array([2 ** 63], np.uint64), np.zeros((0, 4), np.float32)]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
@pytest.mark.parametrize("as_content", [False, True])
def test_tensors_written_here_are_the_bytes_tensorflow_writes_and_read_back(array, as_content):
    content = as_content and array.dtype != object
    ours = array_to_proto(array, as_content=content, message=wire.TensorProto)
    theirs = array_to_proto(array, as_content=content)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    for message in (ours, _real()["tensorflow.TensorProto"].FromString(ours.SerializeToString())):
        back = proto_to_array(message)
        assert back.shape == array.shape and back.dtype == (array.dtype if array.dtype != object else object)
        np.testing.assert_array_equal(back, array)


def test_a_request_written_here_is_read_by_tensorflow_serving_as_written():
    request = wire.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", "predict_tensor"
    request.model_spec.version.value = 3
    request.output_filter.append("probabilities")
    request.inputs["images"].CopyFrom(array_to_proto(ARRAYS[0], as_content=True, message=wire.TensorProto))
    request.inputs["image_bytes"].CopyFrom(array_to_proto(ARRAYS[6], message=wire.TensorProto))
    real = _real()["tensorflow.serving.PredictRequest"].FromString(request.SerializeToString())
    assert (real.model_spec.name, real.model_spec.signature_name, real.model_spec.version.value) == \
        ("m", "predict_tensor", 3)
    assert real.model_spec.WhichOneof("version_choice") == "version"
    from google.protobuf.unknown_fields import UnknownFieldSet
    assert list(real.output_filter) == ["probabilities"] and len(UnknownFieldSet(real)) == 0
    np.testing.assert_array_equal(proto_to_array(real.inputs["images"]), ARRAYS[0])
    assert list(real.inputs["image_bytes"].string_val) == list(ARRAYS[6])
    assert real.inputs["images"].dtype == DType.FLOAT


def test_a_response_tensorflow_serving_writes_is_read_here_unknown_fields_and_all():
    real = _real()["tensorflow.serving.PredictResponse"]()
    real.model_spec.name = "m"
    real.model_spec.version.value = 9
    real.outputs["probabilities"].CopyFrom(array_to_proto(ARRAYS[0]))
    real.outputs["handle"].dtype = DType.RESOURCE if hasattr(DType, "RESOURCE") else 20
    real.outputs["handle"].resource_handle_val.add(device="/cpu:0", name="h")  # a field wire.py leaves out
    ours = wire.parse_response(real.SerializeToString())
    np.testing.assert_array_equal(proto_to_array(ours.outputs["probabilities"]), ARRAYS[0])
    assert ours.model_spec.version.value == 9 and ours.outputs["handle"].dtype == 20
    # what is not declared is kept, not lost (deterministic: a map's entries are otherwise written in any order)
    assert ours.SerializeToString(deterministic=True) == real.SerializeToString(deterministic=True)
    from google.protobuf.message import DecodeError
    with pytest.raises(DecodeError):
        wire.parse_response(b"\x0a\xff\xff\xff\xff\x0f")  # a length far beyond the message


def test_a_load_generator_renders_and_checks_grpc_without_importing_tensorflow(tmp_path):
    """What a Locust process does for a gRPC run: render every request, read and check answers; TensorFlow is
    never imported (it costs seconds and hundreds of MB per generator process)."""
    script = """
import sys
import numpy as np
import loadtests.locustfile  # what `locust -f` loads
from loadtests.drive import wire
from loadtests.drive.foreign import ForeignPayloadSet
from loadtests.drive.payloads import PayloadSet, Verdicts
from server.tensors.proto import array_to_proto
rng = np.random.default_rng(0)
expected = rng.dirichlet(np.ones(4), size=2).astype(np.float32)
payloads = PayloadSet("m", ["a", "b"], [(2, 2), (2, 2)], [b"ja", b"jb"],
                      rng.uniform(-1, 1, (2, 2, 2, 3)).astype(np.float32), expected, {"kind": "test"})
for payload in ("image_b64", "tensor_row", "tensor_columnar"):
    assert payloads.grpc_request(payload, 1, "m").SerializeToString()
response = wire.PredictResponse()
response.outputs["probabilities"].CopyFrom(array_to_proto(expected[1:2], message=wire.TensorProto))
verdicts = Verdicts(payloads)
assert verdicts.grpc(1, response.SerializeToString()) is None
wrong = np.eye(4, dtype=np.float32)[[(int(expected[0].argmax()) + 1) % 4]]
response.outputs["probabilities"].CopyFrom(array_to_proto(wrong, message=wire.TensorProto))
assert "top-1" in verdicts.grpc(0, response.SerializeToString())
assert "unreadable" in verdicts.grpc(0, b"\\x0a\\xff\\xff\\xff\\xff\\x0f")
assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tensorflow"))[:5]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_model_status_states_are_tf_servings_and_a_real_reply_reads_back():
    from tensorflow_serving.apis import get_model_status_pb2

    State = get_model_status_pb2.ModelVersionStatus.State
    assert wire.VERSION_STATES == {number: name for name, number in State.items()}
    real = get_model_status_pb2.GetModelStatusResponse()
    real.model_version_status.add(version=2, state=State.Value("AVAILABLE"))
    real.model_version_status.add(version=1, state=State.Value("END")).status.error_message = "unloaded"
    ours = wire._classes()["tensorflow.serving.GetModelStatusResponse"].FromString(real.SerializeToString())
    assert [(v.version, wire.VERSION_STATES[v.state], v.status.error_message) for v in ours.model_version_status] \
        == [(2, "AVAILABLE", ""), (1, "END", "unloaded")]
    request = wire.GetModelStatusRequest()
    request.model_spec.name = "digits"
    assert get_model_status_pb2.GetModelStatusRequest.FromString(request.SerializeToString()).model_spec.name == "digits"
