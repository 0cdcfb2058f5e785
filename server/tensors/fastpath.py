"""The fast path for big numeric REST bodies: simdjson parses the array into a flat buffer in C and the body's
bracket skeleton proves it regular (server/skeleton.c when built), so it never becomes Python lists. Anything it
cannot prove is left to the exact path (json_in), whose errors are TF Serving's."""
from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from server import native
from server.tensors.dtypes import FLOAT_TYPES, DType, dtype_of

_NOT_SKELETON = bytes(c for c in range(256) if chr(c) not in "[],")
MAX_RANK = 64
_native = None


def native_check() -> Optional[Any]:
    """The C skeleton check (server/skeleton.c) if it is built, else None; looked up once."""
    global _native
    if _native is None:
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
        if tf_dtype not in (DType.FLOAT, DType.DOUBLE, DType.INT32, DType.INT64):
            return None
        try:
            flat = np.frombuffer(self.value.as_buffer(of_type="d" if tf_dtype in FLOAT_TYPES else "i"),
                                 dtype=np.float64 if tf_dtype in FLOAT_TYPES else np.int64)
        except (TypeError, ValueError):
            return None  # a bool, string, null or object among the leaves
        shape = _first_path_shape(self.value)
        if 0 in shape or math.prod(shape) != flat.size or not self._proven_regular(shape):
            return None
        if tf_dtype == DType.INT32 and (flat.min() < -2**31 or flat.max() > 2**31 - 1):
            return None
        return flat.astype(dtype_of(tf_dtype), copy=False).reshape(shape)


HEAD_BYTES = 4096  # how far into a body the head check looks


def _head_is_numeric(body: bytes) -> bool:
    """Whether the body's first array can hold numbers, read from its first bytes only: a b64 image body
    ({"instances": [{"b64": ...}]}), string rows or a columnar object would only be parsed here to be parsed
    again by the exact path. False only when it certainly cannot; True leaves the decision to the parse."""
    start = body.find(b"[", 0, HEAD_BYTES)
    if start < 0 or body.count(b"{", 0, start) != 1:
        return False  # no array near the start, or the value is an object (columnar by name)
    end = min(len(body), start + HEAD_BYTES)
    index = start
    while index < end and body[index] in b"[ \t\r\n":
        index += 1
    return index < end and body[index] not in b'"{'


def fast_body(body: bytes) -> Optional[FastBody]:
    """Recognise {"instances"|"inputs": <array>, "signature_name"?: str} in big bodies; None otherwise.
    With the C check built, a body of 1 MiB or more has its skeleton read on another thread while simdjson
    parses it."""
    if len(body) < FAST_PATH_MIN_BYTES or not _head_is_numeric(body):
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
