"""tensorflow.ProfilerService on the gRPC port (`--enable_profiler`, on by default, as in TF Serving's binary).

TF Serving registers TensorFlow's C++ profiler service on its gRPC port, so
`tf.profiler.experimental.client.trace("grpc://host:8500", logdir, duration_ms)` captures a trace of the serving
process. Python TensorFlow only starts that service as a server of its own, on every interface
(`tf.profiler.experimental.server.start`), so ours answers the same RPCs itself: `Profile` runs a TensorFlow
profiler session in this process for the request's duration (or until `Terminate` names its session) and writes
the XSpace where the request says, `<repository_root>/<session_id>/<host_name>.xplane.pb`, which is where the
client and TensorBoard's profile plugin look; the response only says whether the trace is empty. `Monitor` is
TPU-only in TensorFlow and answers UNIMPLEMENTED, as TensorFlow's CPU build does.

The message classes are built from the service's own field numbers (tsl/profiler/protobuf/profiler_service.proto)
on TensorFlow's ProfileOptions, which TensorFlow ships; TensorFlow does not ship the service's Python module.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Union

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from server.errors import FailedPrecondition, InvalidArgument, Unavailable, Unimplemented

log = logging.getLogger("server.profiler")

SERVICE = "tensorflow.ProfilerService"
MAX_DURATION_MS = 10 * 60 * 1000  # a trace holds every op of the period in memory: ten minutes is plenty

_F = descriptor_pb2.FieldDescriptorProto


def _message_classes() -> dict:
    from tensorflow.tsl.profiler.protobuf import profiler_options_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(profiler_options_pb2.DESCRIPTOR.serialized_pb)
    service = descriptor_pb2.FileDescriptorProto(name="tfsb/profiler_service.proto", package="tensorflow",
                                                 syntax="proto3", dependency=[profiler_options_pb2.DESCRIPTOR.name])

    def message(name: str, *fields: tuple) -> None:
        proto = service.message_type.add(name=name)
        for field_name, number, kind, *rest in fields:
            label = _F.LABEL_REPEATED if rest and rest[0] == "repeated" else _F.LABEL_OPTIONAL
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if kind == _F.TYPE_MESSAGE:
                field.type_name = rest[-1]

    message("ProfileRequest", ("duration_ms", 1, _F.TYPE_UINT64), ("max_events", 2, _F.TYPE_UINT64),
            ("tools", 3, _F.TYPE_STRING, "repeated"), ("opts", 4, _F.TYPE_MESSAGE, ".tensorflow.ProfileOptions"),
            ("repository_root", 5, _F.TYPE_STRING), ("session_id", 6, _F.TYPE_STRING),
            ("host_name", 7, _F.TYPE_STRING))
    message("ProfileToolData", ("name", 1, _F.TYPE_STRING), ("data", 2, _F.TYPE_BYTES))
    message("ProfileResponse", ("tool_data", 6, _F.TYPE_MESSAGE, "repeated", ".tensorflow.ProfileToolData"),
            ("empty_trace", 7, _F.TYPE_BOOL))
    message("TerminateRequest", ("session_id", 1, _F.TYPE_STRING))
    message("TerminateResponse")
    pool.Add(service)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("ProfileRequest", "ProfileResponse", "TerminateRequest", "TerminateResponse")}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def wire_fields(data: bytes) -> Iterator[tuple[int, int, Union[int, bytes]]]:
    """(field number, wire type, value) of one serialized message, read from the wire: an int for a varint (0),
    bytes for a length-delimited field (2) and for fixed 64- and 32-bit ones (1, 5)."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _varint(data, at)
            yield number, kind, value
            continue
        if kind == 2:
            size, at = _varint(data, at)
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind} (groups) in a profiler message")
        yield number, kind, data[at:at + size]
        at += size


def _messages_in(data: bytes, number: int) -> Iterator[bytes]:
    return (value for n, kind, value in wire_fields(data) if n == number and kind == 2)


def has_events(xspace: bytes) -> bool:
    """Whether a serialized XSpace holds a trace event: XSpace.planes (1) > XPlane.lines (3) > XLine.events (4).

    Read from the wire, not parsed: TensorFlow's C++ writes names that are not always valid UTF-8, which Python's
    protobuf refuses in a proto3 string field."""
    return any(True for plane in _messages_in(xspace, 1) for line in _messages_in(plane, 3)
               for _ in _messages_in(line, 4))


class ProfilerService:
    """Profile and Terminate over raw bytes, for a generic gRPC handler. One session at a time per process, as in
    TensorFlow (a second Profile meanwhile is UNAVAILABLE)."""

    def __init__(self):
        self.messages = _message_classes()
        self._busy = threading.Lock()
        self._session_id = ""
        self._terminate = threading.Event()

    def handler(self) -> grpc.GenericRpcHandler:
        def unimplemented(request: bytes, context) -> bytes:
            raise Unimplemented("Monitor is only implemented for TPUs in TensorFlow's profiler service")

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Profile": grpc.unary_unary_rpc_method_handler(self.profile),
            "Terminate": grpc.unary_unary_rpc_method_handler(self.terminate),
            "Monitor": grpc.unary_unary_rpc_method_handler(unimplemented)})

    def profile(self, request: bytes, context) -> bytes:
        req = self.messages["ProfileRequest"].FromString(request)
        if not req.repository_root or not req.session_id:
            raise InvalidArgument("ProfileRequest needs repository_root and session_id (where the trace is written)")
        duration_ms = req.duration_ms or req.opts.duration_ms
        if not 0 < duration_ms <= MAX_DURATION_MS:
            raise InvalidArgument(f"duration_ms must be between 1 and {MAX_DURATION_MS}, not {duration_ms}")
        host = (req.host_name or req.opts.override_hostname or "localhost").replace(":", "_")  # as TensorFlow names it
        for what, part in (("session_id", req.session_id), ("host_name", host)):
            if "/" in part or part in (".", ".."):
                raise InvalidArgument(f"ProfileRequest.{what} {part!r} must be one path component")
        if not self._busy.acquire(blocking=False):
            raise Unavailable("Another profiling session active.")
        try:
            self._session_id = req.session_id
            self._terminate.clear()
            xspace = self._trace(req, duration_ms, context)
        finally:
            self._session_id = ""
            self._busy.release()
        response = self.messages["ProfileResponse"]()
        if not has_events(xspace):
            response.empty_trace = True
            return response.SerializeToString()
        target = Path(req.repository_root) / req.session_id / f"{host}.xplane.pb"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(xspace)
        except OSError as exc:
            raise FailedPrecondition(f"cannot write the trace to {target}: {exc.strerror or exc}") from None
        log.info("profile: %d ms traced into %s", duration_ms, target)
        return response.SerializeToString()

    def _trace(self, req, duration_ms: int, context) -> bytes:
        """The XSpace of a TensorFlow profiler session over the request's period (empty bytes: none written)."""
        import tensorflow as tf

        opts = req.opts
        if opts.start_timestamp_ns:  # the client's delay_ms, as a wall-clock start
            self._terminate.wait(max(0.0, min(opts.start_timestamp_ns / 1e9 - time.time(), MAX_DURATION_MS / 1e3)))
        options = tf.profiler.experimental.ProfilerOptions(
            host_tracer_level=opts.host_tracer_level or 2, python_tracer_level=opts.python_tracer_level,
            device_tracer_level=opts.device_tracer_level or 1)
        with tempfile.TemporaryDirectory(prefix="tfsb-profile-") as scratch:
            tf.profiler.experimental.start(scratch, options=options)
            try:
                deadline = time.monotonic() + duration_ms / 1000.0
                while not self._terminate.is_set() and context.is_active():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._terminate.wait(min(left, 0.25))
            finally:
                tf.profiler.experimental.stop()  # writes <scratch>/plugins/profile/<time>/<host>.xplane.pb
            written = sorted(Path(scratch).rglob("*.xplane.pb"))
            return written[0].read_bytes() if written else b""

    def terminate(self, request: bytes, context) -> bytes:
        req = self.messages["TerminateRequest"].FromString(request)
        if self._session_id and req.session_id == self._session_id:
            self._terminate.set()
        return self.messages["TerminateResponse"]().SerializeToString()
