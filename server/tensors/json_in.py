"""JSON request tensors by TF Serving's rules (tensorflow_serving/util/json_tensor.cc): parsing with its error
texts, bare NaN / Infinity (and -Inf / Inf) tokens, {"b64": ...} strings, row and columnar values to arrays."""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, Optional

import numpy as np

from server.errors import InvalidArgument
from server.tensors.dtypes import FLOAT_TYPES, INT_RANGES, NUMPY_DTYPES, TYPE_NAMES, DType, dtype_of


def _nan_inf(token: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[token]


def loads(body: bytes | str) -> Any:
    """Parse a request body; errors carry rapidjson-like text (`JSON Parse error: ... at offset: N`)."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if not body.strip():
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return _decode(body)
    except json.JSONDecodeError as exc:
        if not _is_short_infinity(body, exc.pos):
            raise InvalidArgument(f"JSON Parse error: {exc.msg}. at offset: {exc.pos}") from None
    # rapidjson's kParseNanAndInfFlag also takes the bare tokens Inf and -Inf, which Python's json does not:
    # spell them out (outside strings only) and parse again; offsets in errors still refer to the body sent
    widened, inserted_at = _spell_out_short_infinities(body)
    try:
        return _decode(widened)
    except json.JSONDecodeError as exc:
        position = exc.pos - 5 * sum(1 for at in inserted_at if at <= exc.pos)
        raise InvalidArgument(f"JSON Parse error: {exc.msg}. at offset: {position}") from None


def _decode(text: str) -> Any:
    try:
        # raw_decode: trailing bytes after the top-level value are ignored, as TF Serving does
        value, _ = json.JSONDecoder(parse_constant=_nan_inf).raw_decode(text, len(text) - len(text.lstrip()))
    except RecursionError:
        raise InvalidArgument("JSON Parse error: nesting too deep") from None
    return value


def _is_short_infinity(text: str, position: int) -> bool:
    return (text.startswith("Inf", position) or text.startswith("-Inf", position)) and \
        not text.startswith("Infinity", position + (text[position] == "-"))


# a JSON string (left as it is), or a bare Inf / -Inf token that is not the start of Infinity
_STRING_OR_SHORT_INF = re.compile(r'"(?:[^"\\]|\\.)*"|-?Inf(?!inity)')


def _spell_out_short_infinities(text: str) -> tuple[str, list[int]]:
    """`text` with every Inf / -Inf token outside strings written Infinity / -Infinity, and the offsets (in the
    new text) just after each insertion, so error positions can be mapped back."""
    pieces, inserted_at, last, grown = [], [], 0, 0
    for match in _STRING_OR_SHORT_INF.finditer(text):
        if match.group().startswith('"'):
            continue
        pieces.append(text[last:match.end()])
        pieces.append("inity")
        grown += 5
        inserted_at.append(match.end() + grown)
        last = match.end()
    pieces.append(text[last:])
    return "".join(pieces), inserted_at


def compact(value: Any) -> str:
    """A JSON value as TF Serving quotes it in messages."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError):
        return str(value)


def json_type(value: Any) -> str:
    """rapidjson's name for a JSON value's type, as TF Serving's messages print it."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _type_error(value: Any, tf_dtype: int) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {compact(value)} Type: {json_type(value)} is not of expected type: "
                           f"{TYPE_NAMES.get(tf_dtype, tf_dtype)}")


def _scalar(value: Any, tf_dtype: int) -> Any:
    """One JSON leaf converted per AddValueToTensor; raises the TF Serving type error."""
    if tf_dtype == DType.STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"Unable to base64 decode: {value['b64'][:64]}") from None
        raise _type_error(value, tf_dtype)
    if tf_dtype == DType.BOOL:
        if isinstance(value, bool):
            return value
        raise _type_error(value, tf_dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, tf_dtype)
    if tf_dtype in FLOAT_TYPES or tf_dtype == DType.HALF:
        return value
    low, high = INT_RANGES[tf_dtype]
    if not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, tf_dtype)
    return value


def _shape_of(value: Any) -> list[int]:
    """Nested-list dims, following the first element at each level (TF Serving's rule)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value: Any, shape: list[int], level: int, out: list, tf_dtype: int) -> None:
    if level == len(shape):
        if isinstance(value, list):
            raise InvalidArgument(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                                  f"expected size: 1")
        out.append(_scalar(value, tf_dtype))
        return
    if not isinstance(value, list) or len(value) != shape[level]:
        size = len(value) if isinstance(value, list) else 1
        raise InvalidArgument(f"Encountered list at unexpected size: {size} at level: {level} "
                              f"expected size: {shape[level]}")
    for item in value:
        _flatten(item, shape, level + 1, out, tf_dtype)


def json_to_array(value: Any, tf_dtype: int) -> np.ndarray:
    """One JSON value (scalar or nested lists) -> an array of the signature's dtype."""
    dtype = dtype_of(tf_dtype)
    shape = _shape_of(value)
    if tf_dtype != DType.STRING and value and isinstance(value, list):
        fast = _fast_nested(value, shape, tf_dtype)
        if fast is not None:
            return fast
    flat: list = []
    _flatten(value, shape, 0, flat, tf_dtype)
    if dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.array(flat, dtype=dtype).reshape(shape)


def _fast_nested(value: list, shape: list[int], tf_dtype: int) -> Optional[np.ndarray]:
    """numpy's own conversion when it is provably the same as the element-wise rules (no bools, no ragging)."""
    dtype = np.dtype(NUMPY_DTYPES[tf_dtype])
    try:
        array = np.asarray(value)
    except ValueError:
        return None  # ragged: the slow path names where
    if list(array.shape) != shape or array.dtype.kind not in "if":
        return None
    if array.dtype.kind == "f" and dtype.kind != "f":
        return None  # 1.0 for an int input is a type error: the slow path says so
    if dtype.kind in "iu" and (array.min() < INT_RANGES[tf_dtype][0] or array.max() > INT_RANGES[tf_dtype][1]):
        return None
    if _has_bool(value, len(shape)):
        return None
    return array.astype(dtype, copy=False)



def _has_bool(value: list, depth: int) -> bool:
    # numpy turns True into 1; JSON true is a type error for numbers. Checking the innermost lists is cheap.
    if depth == 1:
        return any(v is True or v is False for v in value)
    return any(_has_bool(v, depth - 1) for v in value)


def rows_to_array(rows: list, tf_dtype: int) -> np.ndarray:
    """Stack one value per instance into [len(rows)] + row_shape, checking every row has the same shape."""
    arrays = [json_to_array(row, tf_dtype) for row in rows]
    first = arrays[0]
    for array in arrays[1:]:
        if array.size != first.size:
            raise InvalidArgument(f"Expecting tensor size: {first.size} but got: {array.size}")
        if array.shape != first.shape:
            raise InvalidArgument(f"Expecting shape {_dims(first.shape)} but got: {_dims(array.shape)}")
    if first.dtype == object:
        stacked = np.empty((len(arrays),) + first.shape, dtype=object)
        for index, array in enumerate(arrays):
            if array.ndim:
                stacked[index] = array
            else:  # a 0-d object array would be stored as the element itself
                stacked[index] = array.item()
        return stacked
    return np.stack(arrays)


def _dims(shape: tuple) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
