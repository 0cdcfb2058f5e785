"""A server-side trace of one measured window (`bench --profile`, `capacity --profile`), without TensorFlow.

The Locust process that opens the window sends `tensorflow.ProfilerService/Profile` to the server's gRPC port (TF
Serving's --enable_profiler, and the embedded server's) as the window begins, and `Terminate` as it closes, so the
trace covers the measured window and nothing else. The server writes it in TensorBoard's layout:
`<dir>/plugins/profile/<session>/server.xplane.pb` (`tensorboard --logdir <dir>`, the Profile tab). The messages
are written here from their field numbers (tsl/profiler/protobuf/profiler_service.proto): a load generator never
imports TensorFlow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from server.profiler import wire_fields  # no TensorFlow at import

SERVICE = "tensorflow.ProfilerService"
HOST_NAME = "server"  # the trace's file name: <session>/server.xplane.pb


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _text(number: int, value: str) -> bytes:
    data = value.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def profile_request(duration_ms: int, repository_root: str, session_id: str, host_name: str = HOST_NAME) -> bytes:
    """ProfileRequest: duration_ms (1), repository_root (5), session_id (6), host_name (7)."""
    return (_varint(1 << 3) + _varint(duration_ms) + _text(5, repository_root) + _text(6, session_id)
            + _text(7, host_name))


def terminate_request(session_id: str) -> bytes:
    """TerminateRequest: session_id (1)."""
    return _text(1, session_id)


def empty_trace(response: bytes) -> bool:
    """ProfileResponse.empty_trace (field 7, a bool), read from the wire beside tool_data (6)."""
    return any(number == 7 and kind == 0 and value for number, kind, value in wire_fields(response))


def trace_path(profile_dir: Path, session_id: str) -> Path:
    return profile_dir / "plugins" / "profile" / session_id / f"{HOST_NAME}.xplane.pb"


class WindowTrace:
    """One Profile call around a window: `begin` as it opens, `end` as it closes, `outcome` for the samples file."""

    def __init__(self, grpc_target: str, profile_dir: Path, session_id: str, longest_s: float):
        import grpc

        self.profile_dir, self.session_id = profile_dir, session_id
        self.longest_ms = int(longest_s * 1000) + 1000  # Terminate ends it with the window; this only bounds it
        self._channel = grpc.insecure_channel(grpc_target)
        self._future = None
        self._error: Optional[str] = None

    def begin(self) -> None:
        call = self._channel.unary_unary(f"/{SERVICE}/Profile")
        root = str(Path(self.profile_dir).resolve() / "plugins" / "profile")
        self._future = call.future(profile_request(self.longest_ms, root, self.session_id),
                                   timeout=self.longest_ms / 1000.0 + 60)

    def end(self) -> None:
        import grpc

        if self._future is None:
            return
        try:
            self._channel.unary_unary(f"/{SERVICE}/Terminate")(terminate_request(self.session_id), timeout=30)
        except grpc.RpcError as exc:
            self._error = f"{exc.code().name}: {exc.details()}"

    def outcome(self) -> dict:
        """{'file': the trace's path, or None; 'error': why there is none (or what went wrong at its end)}."""
        import grpc

        if self._future is None:
            return {"file": None, "error": "the window never opened"}
        try:
            response = self._future.result(timeout=self.longest_ms / 1000.0 + 60)
        except grpc.FutureTimeoutError:
            return {"file": None, "error": "the server's profiler did not answer"}
        except grpc.RpcError as exc:
            hint = (" (the server answers no tensorflow.ProfilerService: TF Serving and the embedded server do "
                    "unless --enable_profiler=false)" if exc.code() == grpc.StatusCode.UNIMPLEMENTED else "")
            return {"file": None, "error": f"{exc.code().name}: {exc.details()}{hint}"}
        finally:
            self._channel.close()
        if empty_trace(response):
            return {"file": None, "error": "the server's profiler collected no trace event"}
        path = trace_path(Path(self.profile_dir), self.session_id)
        if not path.is_file():
            return {"file": None, "error": f"the server wrote no trace at {path} (is its file system this one?)"}
        return {"file": str(path.resolve()), "error": self._error}
