"""TensorFlow's DataType enum by name, and what each is in numpy and in TF Serving's messages."""
from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np

from server.errors import Unimplemented


class DType(IntEnum):
    """tensorflow.DataType (types.proto): the numbers TensorProto.dtype and signatures carry."""
    INVALID = 0
    FLOAT = 1
    DOUBLE = 2
    INT32 = 3
    UINT8 = 4
    INT16 = 5
    INT8 = 6
    STRING = 7
    COMPLEX64 = 8
    INT64 = 9
    BOOL = 10
    BFLOAT16 = 14
    UINT16 = 17
    COMPLEX128 = 18
    HALF = 19
    UINT32 = 22
    UINT64 = 23


# TF's DataType enum names, as metadata and messages print them: DT_FLOAT, DT_STRING, ...
DT_NAMES = {int(dtype): f"DT_{dtype.name}" for dtype in DType}
NUMPY_DTYPES: dict[int, Any] = {
    DType.FLOAT: np.float32, DType.DOUBLE: np.float64, DType.INT32: np.int32, DType.UINT8: np.uint8,
    DType.INT16: np.int16, DType.INT8: np.int8, DType.STRING: object, DType.INT64: np.int64, DType.BOOL: np.bool_,
    DType.UINT16: np.uint16, DType.HALF: np.float16, DType.UINT32: np.uint32, DType.UINT64: np.uint64,
}
# TF's DataTypeString: DT_FLOAT -> float, DT_INT32 -> int32, ...
TYPE_NAMES = {code: name[3:].lower() for code, name in DT_NAMES.items() if code}
# JSON integers each dtype accepts (TF Serving reads the small ones through int32)
INT_RANGES = {DType.INT32: (-2**31, 2**31 - 1), DType.UINT8: (-2**31, 2**31 - 1), DType.INT16: (-2**31, 2**31 - 1),
              DType.INT8: (-2**31, 2**31 - 1), DType.INT64: (-2**63, 2**63 - 1), DType.UINT16: (0, 2**32 - 1),
              DType.UINT32: (0, 2**32 - 1), DType.UINT64: (0, 2**64 - 1)}
FLOAT_TYPES = (DType.FLOAT, DType.DOUBLE)


def dtype_name(dtype: int) -> str:
    """DT_FLOAT for 1, DT_<n> for a number TF has no name for here."""
    return DT_NAMES.get(dtype, f"DT_{dtype}")


def dtype_of(tf_dtype: int):
    """numpy dtype for a TF DataType enum, or UNIMPLEMENTED like TF Serving's JSON conversion."""
    try:
        return NUMPY_DTYPES[tf_dtype]
    except KeyError:
        raise Unimplemented(f"Conversion of JSON Value to type: {TYPE_NAMES.get(tf_dtype, tf_dtype)} "
                            "is not supported") from None


def tf_dtype_of(dtype) -> int:
    """The TF DataType of a numpy (non-object) dtype."""
    return next(k for k, v in NUMPY_DTYPES.items() if v is not object and np.dtype(v) == np.dtype(dtype))
