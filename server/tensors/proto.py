"""TensorProto <-> numpy, as TF's Tensor::FromProto reads them and TF Serving writes them."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from server.errors import InvalidArgument
from server.tensors.dtypes import NUMPY_DTYPES, TYPE_NAMES, DType, tf_dtype_of


_TYPED_FIELDS = {DType.FLOAT: "float_val", DType.DOUBLE: "double_val", DType.INT32: "int_val",
                 DType.UINT8: "int_val", DType.INT16: "int_val", DType.INT8: "int_val", DType.STRING: "string_val",
                 DType.INT64: "int64_val", DType.BOOL: "bool_val", DType.UINT16: "int_val", DType.HALF: "half_val",
                 DType.UINT32: "uint32_val", DType.UINT64: "uint64_val"}


def proto_to_array(proto) -> np.ndarray:
    """TensorProto -> numpy, as TF's Tensor::FromProto: tensor_content wins; typed fields pad with the last value.

    Anything that does not decode (a content length that is no multiple of the element size, values out of the
    dtype's range) is InvalidArgument, as TF Serving's "Unable to parse tensor proto".
    """
    try:
        return _proto_to_array(proto)
    except (ValueError, OverflowError, TypeError) as exc:
        raise InvalidArgument(f"Unable to parse tensor proto: {exc}") from None


def _proto_to_array(proto) -> np.ndarray:
    tf_dtype = int(proto.dtype)
    if tf_dtype not in NUMPY_DTYPES:
        raise InvalidArgument(f"Unsupported tensor dtype {TYPE_NAMES.get(tf_dtype, tf_dtype)} in request")
    dtype = NUMPY_DTYPES[tf_dtype]
    dims = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"Unable to parse tensor proto: negative dimension in shape {dims}")
    count = math.prod(dims)
    if proto.tensor_content and tf_dtype != DType.STRING:
        if len(proto.tensor_content) % np.dtype(dtype).itemsize:
            raise InvalidArgument(f"Unable to parse tensor proto: tensor_content has {len(proto.tensor_content)} "
                                  f"bytes, not a multiple of {np.dtype(dtype).itemsize} "
                                  f"({TYPE_NAMES.get(tf_dtype, tf_dtype)})")
        data = np.frombuffer(proto.tensor_content, dtype=dtype)
        if data.size != count:
            raise InvalidArgument(f"Unable to parse tensor proto: tensor_content holds {data.size} values, "
                                  f"shape {dims} needs {count}")
        return data.reshape(dims)
    values = getattr(proto, _TYPED_FIELDS[tf_dtype])
    if len(values) > count:
        raise InvalidArgument(f"Unable to parse tensor proto: {len(values)} values for shape {dims}")
    if tf_dtype == DType.STRING:
        array = np.empty(count, dtype=object)
        if len(values):
            array[:len(values)] = list(values)
            array[len(values):] = values[-1]
        else:
            array[:] = b""
        return array.reshape(dims)
    if tf_dtype == DType.HALF:
        base = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        base = np.array(values, dtype=dtype)
    if base.size < count:
        fill = base[-1] if base.size else np.zeros((), dtype=base.dtype if tf_dtype != DType.HALF else np.float16)
        base = np.concatenate([base, np.full(count - base.size, fill, dtype=base.dtype)])
    return base.reshape(dims)


def array_to_proto(array: np.ndarray, tf_dtype: Optional[int] = None, as_content: bool = False, message=None):
    """numpy -> TensorProto with typed *_val fields (TF Serving's default) or tensor_content.

    `message`: the TensorProto class to fill (TensorFlow's by default; a load generator passes loadtests.drive.wire's).
    """
    if message is None:
        from tensorflow.core.framework.tensor_pb2 import TensorProto as message

    array = np.asarray(array)
    if tf_dtype is None:
        tf_dtype = DType.STRING if array.dtype.kind in "OSU" else tf_dtype_of(array.dtype)
    proto = message(dtype=tf_dtype)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=int(d)) for d in array.shape)
    if tf_dtype == DType.STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif as_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[tf_dtype]).tobytes()
    elif tf_dtype == DType.HALF:
        proto.half_val.extend(array.astype(np.float16).view(np.uint16).ravel().tolist())
    else:
        getattr(proto, _TYPED_FIELDS[tf_dtype]).extend(array.ravel().tolist())
    return proto
