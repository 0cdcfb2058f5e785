"""TF Serving's Predict and GetModelStatus messages without TensorFlow: a load generator (and a wait for a model
to be ready) must not pay TensorFlow's import.

`tensorflow_serving.apis.predict_pb2` imports TensorFlow (about 3 s and 600 MB per process on a 2-core machine),
and a Locust process only needs to write PredictRequests and read PredictResponses. This module declares the
fields it uses of PredictRequest, PredictResponse, ModelSpec, TensorProto and TensorShapeProto, with TF Serving's
names and field numbers (a unit test holds them to the real descriptors), in a private descriptor pool, and
builds the message classes with protobuf's own C implementation. The bytes are TF Serving's wire format; fields
left out (PredictRequest's streamed options, a TensorProto's resource handles and variants) are kept as unknown
fields when read and never written. GetModelStatus (ModelService) is declared whole: a readiness check
(deploy.waiting) asks it.

`dtype` is declared as int32 rather than the DataType enum: both are varints on the wire, and the readers here
compare numbers (server.tensors.dtypes).
"""
from __future__ import annotations

from functools import lru_cache

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MODEL_STATUS_METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
# ModelVersionStatus.State, by number (tensorflow_serving/apis/get_model_status.proto)
VERSION_STATES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
MESSAGES = ("tensorflow.TensorProto", "tensorflow.TensorShapeProto", "tensorflow.serving.ModelSpec",
            "tensorflow.serving.PredictRequest", "tensorflow.serving.PredictResponse",
            "tensorflow.serving.GetModelStatusRequest", "tensorflow.serving.GetModelStatusResponse",
            "tensorflow.serving.ModelVersionStatus", "tensorflow.serving.StatusProto")


@lru_cache(maxsize=1)
def _classes() -> dict:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    def add(message, name, number, kind, repeated=False, type_name=None):
        message.field.add(name=name, number=number, type=kind, type_name=type_name,
                          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)

    tensor = descriptor_pb2.FileDescriptorProto(name="tfsb_wire_tensor.proto", package="tensorflow",
                                               syntax="proto3")
    shape = tensor.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    add(dim, "size", 1, F.TYPE_INT64)
    add(dim, "name", 2, F.TYPE_STRING)
    add(shape, "dim", 2, F.TYPE_MESSAGE, True, ".tensorflow.TensorShapeProto.Dim")
    add(shape, "unknown_rank", 3, F.TYPE_BOOL)
    proto = tensor.message_type.add(name="TensorProto")
    add(proto, "dtype", 1, F.TYPE_INT32)
    add(proto, "tensor_shape", 2, F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto")
    add(proto, "version_number", 3, F.TYPE_INT32)
    add(proto, "tensor_content", 4, F.TYPE_BYTES)
    for name, number, kind in (("half_val", 13, F.TYPE_INT32), ("float_val", 5, F.TYPE_FLOAT),
                               ("double_val", 6, F.TYPE_DOUBLE), ("int_val", 7, F.TYPE_INT32),
                               ("string_val", 8, F.TYPE_BYTES), ("scomplex_val", 9, F.TYPE_FLOAT),
                               ("int64_val", 10, F.TYPE_INT64), ("bool_val", 11, F.TYPE_BOOL),
                               ("dcomplex_val", 12, F.TYPE_DOUBLE), ("uint32_val", 16, F.TYPE_UINT32),
                               ("uint64_val", 17, F.TYPE_UINT64)):
        add(proto, name, number, kind, repeated=True)  # proto3: numeric repeated fields are packed
    add(proto, "float8_val", 18, F.TYPE_BYTES)
    pool.Add(tensor)

    serving = descriptor_pb2.FileDescriptorProto(
        name="tfsb_wire_predict.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "tfsb_wire_tensor.proto"])
    spec = serving.message_type.add(name="ModelSpec")
    spec.oneof_decl.add(name="version_choice")
    add(spec, "name", 1, F.TYPE_STRING)
    add(spec, "version", 2, F.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value")
    spec.field[-1].oneof_index = 0
    add(spec, "version_label", 4, F.TYPE_STRING)
    spec.field[-1].oneof_index = 0
    add(spec, "signature_name", 3, F.TYPE_STRING)

    def tensor_map(message, field: str, number: int) -> None:
        entry = message.nested_type.add(name=field.capitalize() + "Entry")
        entry.options.map_entry = True
        add(entry, "key", 1, F.TYPE_STRING)
        add(entry, "value", 2, F.TYPE_MESSAGE, type_name=".tensorflow.TensorProto")
        add(message, field, number, F.TYPE_MESSAGE, True, f".{serving.package}.{message.name}.{entry.name}")

    request = serving.message_type.add(name="PredictRequest")
    add(request, "model_spec", 1, F.TYPE_MESSAGE, type_name=".tensorflow.serving.ModelSpec")
    tensor_map(request, "inputs", 2)
    add(request, "output_filter", 3, F.TYPE_STRING, repeated=True)
    response = serving.message_type.add(name="PredictResponse")
    tensor_map(response, "outputs", 1)
    add(response, "model_spec", 2, F.TYPE_MESSAGE, type_name=".tensorflow.serving.ModelSpec")
    status = serving.message_type.add(name="StatusProto")
    add(status, "error_code", 1, F.TYPE_INT32)  # tensorflow.error.Code, a varint as dtype above
    add(status, "error_message", 2, F.TYPE_STRING)
    version = serving.message_type.add(name="ModelVersionStatus")
    add(version, "version", 1, F.TYPE_INT64)
    add(version, "state", 2, F.TYPE_INT32)  # its State enum: VERSION_STATES
    add(version, "status", 3, F.TYPE_MESSAGE, type_name=".tensorflow.serving.StatusProto")
    status_request = serving.message_type.add(name="GetModelStatusRequest")
    add(status_request, "model_spec", 1, F.TYPE_MESSAGE, type_name=".tensorflow.serving.ModelSpec")
    status_response = serving.message_type.add(name="GetModelStatusResponse")
    add(status_response, "model_version_status", 1, F.TYPE_MESSAGE, True, ".tensorflow.serving.ModelVersionStatus")
    pool.Add(serving)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name in MESSAGES}


def TensorProto(**fields):
    return _classes()["tensorflow.TensorProto"](**fields)


def PredictRequest(**fields):
    return _classes()["tensorflow.serving.PredictRequest"](**fields)


def PredictResponse(**fields):
    return _classes()["tensorflow.serving.PredictResponse"](**fields)


def parse_response(message: bytes):
    """A serialized PredictResponse (google.protobuf.message.DecodeError if it is not one)."""
    return _classes()["tensorflow.serving.PredictResponse"].FromString(message)


def GetModelStatusRequest(**fields):
    return _classes()["tensorflow.serving.GetModelStatusRequest"](**fields)


def model_status_method(channel):
    """`channel`'s ModelService.GetModelStatus as a grpcio callable taking and returning this module's messages."""
    return channel.unary_unary(
        MODEL_STATUS_METHOD, request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=_classes()["tensorflow.serving.GetModelStatusResponse"].FromString)


def descriptors() -> dict:
    """Full name -> this module's descriptor (for the test that holds them to TF Serving's)."""
    return {name: cls.DESCRIPTOR for name, cls in _classes().items()}


def predict_method(channel, raw: bool = False):
    """`channel`'s PredictionService.Predict as a grpcio callable, without TensorFlow's stubs.

    It takes these PredictRequests and returns PredictResponses; `raw` takes and returns their serialized bytes
    (a load generator renders its requests once and checks answers by their bytes).
    """
    if raw:
        return channel.unary_unary(PREDICT_METHOD)
    return channel.unary_unary(PREDICT_METHOD, request_serializer=lambda message: message.SerializeToString(),
                               response_deserializer=parse_response)
