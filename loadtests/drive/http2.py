"""A unary gRPC call on plaintext HTTP/2, as bytes (RFC 9113, RFC 7541): frame and settings numbers, the HPACK
block of a request (literals only, the server's dynamic table left alone), the length-prefixed message, one frame.
The lean client (leangrpc.py) sends what these render, keeps a Stream per call and reads frames back; the conformance tests' server
(an independent codec) checks both against each other."""
from __future__ import annotations

import math
import struct
from typing import Optional

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
MAX_WINDOW = 2 ** 31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
OUR_MAX_FRAME = 2 ** 24 - 1
LAST_STREAM_ID = 2 ** 31 - 1

# grpc-status codes (the gRPC spec's numbering) by name, as grpc.StatusCode spells them
STATUS_NAMES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]


class GrpcError(Exception):
    """A call that ended without an answer: a non-zero grpc-status, a reset stream or a broken connection."""

    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK's prefixed integer (RFC 7541 section 5.1), the prefix's high bits set from `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name_index: int, name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing (section 6.2.2): the server's dynamic table is left alone."""
    head = _integer(name_index, 4) if name_index else b"\x00" + _integer(len(name), 7) + name
    return head + _integer(len(value), 7) + value


def request_headers(authority: str, path: str, timeout_s: Optional[float] = None) -> bytes:
    """The HPACK block of a unary call: POST, http, the method's path, the authority, gRPC's content type, te,
    and the deadline (grpc-timeout, as grpcio sends for a call with a timeout; a proxy or server may need one)."""
    deadline = _literal(0, b"grpc-timeout", b"%dS" % math.ceil(timeout_s)) if timeout_s else b""
    return (b"\x83\x86"  # :method POST and :scheme http, from the static table (indexes 3 and 6)
            + _literal(4, b"", path.encode()) + _literal(1, b"", authority.encode())
            + _literal(31, b"", b"application/grpc") + _literal(0, b"te", b"trailers") + deadline)


def grpc_message(serialized: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length, the bytes."""
    return struct.pack(">?I", False, len(serialized)) + serialized


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


class Stream:
    """One call's state on its stream: the answer's bytes and trailers, the send window, what waits for it."""

    __slots__ = ("job", "on_answer", "data", "status", "message", "send_window", "pending", "done")

    def __init__(self, job, on_answer, send_window: int):
        self.job, self.on_answer = job, on_answer
        self.data = bytearray()
        self.status: Optional[str] = None
        self.message = ""
        self.send_window = send_window
        self.pending: Optional[memoryview] = None  # message bytes waiting for the server's window
        self.done = False
