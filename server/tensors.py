"""TF Serving's JSON tensor rules and TensorProto <-> numpy, in one place.

JSON (REST): row ("instances") and columnar ("inputs") requests, {"b64": ...} for string inputs,
`_bytes` output aliases written as {"b64": ...}, TF Serving's float formatting (%.6g, else %.9g / %.17g,
".0" appended to integral values) and bare NaN / Infinity tokens. Messages match
tensorflow_serving/util/json_tensor.cc so clients see the same errors as from TF Serving.

Large numeric bodies take a fast path: simdjson parses the array into a flat buffer in C and the
body's bracket skeleton proves the array regular, so it never becomes Python lists.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import json
import math
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from server.errors import InvalidArgument, Unimplemented
from server.model import DT_NAMES

NUMPY_DTYPES: dict[int, Any] = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 7: object,
    9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64,
}
# TF's DataTypeString: DT_FLOAT -> float, DT_INT32 -> int32, ...
TYPE_NAMES = {code: name[3:].lower() for code, name in DT_NAMES.items() if code}
_INT_RANGES = {3: (-2**31, 2**31 - 1), 4: (-2**31, 2**31 - 1), 5: (-2**31, 2**31 - 1), 6: (-2**31, 2**31 - 1),
               9: (-2**63, 2**63 - 1), 17: (0, 2**32 - 1), 22: (0, 2**32 - 1), 23: (0, 2**64 - 1)}
FLOAT_TYPES = (1, 2)


def dtype_of(tf_dtype: int):
    """numpy dtype for a TF DataType enum, or UNIMPLEMENTED like TF Serving's JSON conversion."""
    try:
        return NUMPY_DTYPES[tf_dtype]
    except KeyError:
        raise Unimplemented(f"Conversion of JSON Value to type: {TYPE_NAMES.get(tf_dtype, tf_dtype)} "
                            "is not supported") from None


# ------------------------------------------------------------------------------ JSON parsing

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
    if tf_dtype == 7:
        if isinstance(value, str):
            return value.encode("utf-8")
        if is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"Unable to base64 decode: {value['b64'][:64]}") from None
        raise _type_error(value, tf_dtype)
    if tf_dtype == 10:
        if isinstance(value, bool):
            return value
        raise _type_error(value, tf_dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, tf_dtype)
    if tf_dtype in FLOAT_TYPES or tf_dtype == 19:
        return value
    low, high = _INT_RANGES[tf_dtype]
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
    if tf_dtype != 7 and value and isinstance(value, list):
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
    if dtype.kind in "iu" and (array.min() < _INT_RANGES[tf_dtype][0] or array.max() > _INT_RANGES[tf_dtype][1]):
        return None
    if _has_bool(value, len(shape)):
        return None
    return array.astype(dtype, copy=False)


def _tf_of(dtype) -> int:
    return next(k for k, v in NUMPY_DTYPES.items() if v is not object and np.dtype(v) == np.dtype(dtype))


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


# ------------------------------------------------------------------ fast path for big numeric bodies

_NOT_SKELETON = bytes(c for c in range(256) if chr(c) not in "[],")
MAX_RANK = 64
_native = None


def native_check() -> Optional[Any]:
    """The C skeleton check (server/skeleton.c) if it is built, else None; looked up once."""
    global _native
    if _native is None:
        from server import native
        _native = native.load() or False
    return _native or None


@lru_cache(maxsize=64)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The bracket/comma skeleton of a regular nested array of `shape`: [[,],[,]] for (2, 2)."""
    text = ""
    for dim in reversed(shape):
        text = "[" + ",".join([text] * dim) + "]"
    return text.encode()


def _first_path_shape(value) -> tuple[int, ...]:
    """Dims of a nested simdjson array along its first elements (a few steps, not a scan of the body); the caller
    then checks the leaf count and that the body's skeleton is that of a regular array of this shape."""
    import simdjson

    dims = []
    while isinstance(value, simdjson.Array):
        dims.append(len(value))
        if not dims[-1]:
            break
        value = value[0]
    return tuple(dims)


_parsers = threading.local()


FAST_PATH_MIN_BYTES = 16 * 1024
# from this size on, the C check runs on its own thread beside the parse; below it, after the parse and only for
# numeric arrays (a thread there would cost more than it saves, e.g. for a b64 image body)
PARALLEL_CHECK_MIN_BYTES = 1024 * 1024


def _native_shape(call, *args) -> tuple[int, ...]:
    """Run regular_shape or regular_shape_finish; the shape, or () when the array is not proven regular."""
    dims = (ctypes.c_int64 * MAX_RANK)()
    rank = call(*args, dims, MAX_RANK)
    return tuple(dims[:rank]) if rank > 0 else ()


@dataclass
class FastBody:
    """A predict body whose one tensor is a big numeric array, parsed by simdjson (C), not Python lists."""
    signature_name: Optional[str]
    key: str                # "instances" (row) or "inputs" (columnar)
    body: bytes
    value: Any              # simdjson.Array, kept alive with its parser
    parser: Any
    # the C check's verdict once it has run (beside the parse for big bodies, else on first use): the shape of
    # the body's regular array, or () when not proven regular
    regular_shape: Optional[tuple[int, ...]] = None

    def _proven_regular(self, shape: tuple[int, ...]) -> bool:
        # other members (signature_name) add at most one comma; brackets or commas inside them fail the check
        library = native_check()
        if library is None:
            return self.body.translate(None, _NOT_SKELETON).strip(b",") == _skeleton(shape)
        if self.regular_shape is None:
            self.regular_shape = _native_shape(library.regular_shape, self.body, len(self.body))
        return self.regular_shape == shape

    def array(self, tf_dtype: int) -> Optional[np.ndarray]:
        """The tensor, or None when only the exact slow path can decide (its errors are TF Serving's)."""
        if tf_dtype not in (1, 2, 3, 9):
            return None
        try:
            flat = np.frombuffer(self.value.as_buffer(of_type="d" if tf_dtype in (1, 2) else "i"),
                                 dtype=np.float64 if tf_dtype in (1, 2) else np.int64)
        except (TypeError, ValueError):
            return None  # a bool, string, null or object among the leaves
        shape = _first_path_shape(self.value)
        if 0 in shape or math.prod(shape) != flat.size or not self._proven_regular(shape):
            return None
        if tf_dtype == 3 and (flat.min() < -2**31 or flat.max() > 2**31 - 1):
            return None
        return flat.astype(dtype_of(tf_dtype), copy=False).reshape(shape)


def fast_body(body: bytes) -> Optional[FastBody]:
    """Recognise {"instances"|"inputs": <array>, "signature_name"?: str} in big bodies; None otherwise.
    With the C check built, a body of 1 MiB or more has its skeleton read on another thread while simdjson
    parses it."""
    if len(body) < FAST_PATH_MIN_BYTES:
        return None
    try:
        import simdjson  # noqa: F401  (only whether it is installed; _recognise uses it)
    except ImportError:
        return None
    library = native_check()
    if library is None or len(body) < PARALLEL_CHECK_MIN_BYTES:
        return _recognise(body)
    job = library.regular_shape_start(body, len(body))
    try:
        fast = _recognise(body)
    finally:  # always joined, whatever the parse did
        regular_shape = _native_shape(library.regular_shape_finish, job)
    if fast is not None:
        fast.regular_shape = regular_shape
    return fast


def _recognise(body: bytes) -> Optional[FastBody]:
    import simdjson

    # one parser per thread, reused: its buffers are sized for the bodies it has seen
    parser = getattr(_parsers, "parser", None) or simdjson.Parser()
    try:
        try:
            doc = parser.parse(body)
        except RuntimeError:  # values of the parser's last document are still alive: use a fresh parser
            parser = simdjson.Parser()
            doc = parser.parse(body)
    except ValueError:
        return None
    _parsers.parser = parser
    if not isinstance(doc, simdjson.Object):
        return None
    keys = set(doc.keys())
    present = [k for k in ("instances", "inputs") if k in keys]
    if len(present) != 1 or not keys <= {"instances", "inputs", "signature_name"}:
        return None
    signature_name = doc.get("signature_name")
    value = doc[present[0]]
    if (signature_name is not None and not isinstance(signature_name, str)) or not isinstance(value, simdjson.Array):
        return None
    return FastBody(signature_name, present[0], body, value, parser)


# ------------------------------------------------------------------------------- JSON writing

_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _format_floats(array: np.ndarray) -> list[str]:
    """TF Serving's WriteDecimal: %.6g unless it does not round-trip, then max_digits10; '.0' if integral.

    One C-level format per value and one vectorised round-trip check; only the values that need it get the
    long form (about 2.6x faster than numpy.char.mod on a 1000-class softmax)."""
    flat = array.ravel()
    if flat.size == 0:
        return []
    values = flat.tolist()  # Python floats; float32 widens exactly
    texts = ["%.6g" % value for value in values]
    single = flat.dtype == np.float32
    back = np.array(list(map(float, texts)), dtype=np.float32 if single else np.float64)
    long_format = "%.9g" if single else "%.17g"
    for index in np.flatnonzero(back != flat).tolist():  # NaN lands here too, and stays "nan"
        texts[index] = long_format % values[index]
    return [text if ("." in text or "e" in text) else _SPECIAL_FLOATS.get(text, text + ".0") for text in texts]


def _leaf_texts(array: np.ndarray, as_bytes: bool) -> list[str]:
    kind = array.dtype.kind
    flat = array.ravel()
    if kind == "f":
        return _format_floats(array)
    if kind == "b":
        return ["true" if v else "false" for v in flat]
    if kind in "iu":
        return [str(int(v)) for v in flat]
    texts = []
    for value in flat:
        data = value if isinstance(value, bytes) else str(value).encode()
        if as_bytes:
            texts.append('{"b64": "' + base64.b64encode(data).decode() + '"}')
        else:
            texts.append(json.dumps(data.decode("utf-8", errors="replace")))
    return texts


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def array_json(array: np.ndarray, alias: str) -> str:
    """A tensor as JSON text (nested lists), string outputs as b64 objects when the alias ends in _bytes."""
    return _nest(_leaf_texts(array, alias.endswith("_bytes")), array.shape)


def predictions_json(outputs: dict[str, np.ndarray]) -> str:
    """Row-format response {"predictions": [...]}: every output split along dimension 0."""
    batch = None
    for alias, array in outputs.items():
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {alias} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise InvalidArgument(f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} "
                                  f"expecting: {batch}")
        batch = array.shape[0]
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return '{"predictions": ' + array_json(array, alias) + "}"
    rows = []
    for index in range(batch or 0):
        # [index, ...] keeps an ndarray even for one string, where [index] would give bare bytes
        parts = [f"{json.dumps(alias)}: {array_json(outputs[alias][index, ...], alias)}" for alias in outputs]
        rows.append("{" + ", ".join(parts) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def outputs_json(outputs: dict[str, np.ndarray]) -> str:
    """Columnar response {"outputs": tensor} or {"outputs": {alias: tensor}}."""
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return '{"outputs": ' + array_json(array, alias) + "}"
    parts = [f"{json.dumps(alias)}: {array_json(array, alias)}" for alias, array in outputs.items()]
    return '{"outputs": {' + ", ".join(parts) + "}}"


# ------------------------------------------------------------------------------- TensorProto

_TYPED_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
                 7: "string_val", 9: "int64_val", 10: "bool_val", 17: "int_val", 19: "half_val",
                 22: "uint32_val", 23: "uint64_val"}


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
    if proto.tensor_content and tf_dtype != 7:
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
    if tf_dtype == 7:
        array = np.empty(count, dtype=object)
        if len(values):
            array[:len(values)] = list(values)
            array[len(values):] = values[-1]
        else:
            array[:] = b""
        return array.reshape(dims)
    if tf_dtype == 19:
        base = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        base = np.array(values, dtype=dtype)
    if base.size < count:
        fill = base[-1] if base.size else np.zeros((), dtype=base.dtype if tf_dtype != 19 else np.float16)
        base = np.concatenate([base, np.full(count - base.size, fill, dtype=base.dtype)])
    return base.reshape(dims)


def array_to_proto(array: np.ndarray, tf_dtype: Optional[int] = None, as_content: bool = False):
    """numpy -> TensorProto with typed *_val fields (TF Serving's default) or tensor_content."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    array = np.asarray(array)
    if tf_dtype is None:
        tf_dtype = 7 if array.dtype.kind in "OSU" else _tf_of(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=tf_dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape]))
    if tf_dtype == 7:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif as_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[tf_dtype]).tobytes()
    elif tf_dtype == 19:
        proto.half_val.extend(array.astype(np.float16).view(np.uint16).ravel().tolist())
    else:
        getattr(proto, _TYPED_FIELDS[tf_dtype]).extend(array.ravel().tolist())
    return proto
