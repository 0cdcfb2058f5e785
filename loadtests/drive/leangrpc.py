"""Unary gRPC over plaintext HTTP/2 with pre-rendered requests: GrpcUser's timed path.

grpcio in gevent mode spends a few hundred microseconds of Python per call (call objects, completion-queue
polling, condition variables), which is most of what one Locust process can send. This client speaks the part of
HTTP/2 (RFC 9113) a unary call needs, on a gevent socket. Requests are rendered before the run (http2.py), so a
call is one write of frames with the stream id filled in. Answers are read frame by frame: HEADERS and
CONTINUATION decoded with the `hpack` package, DATA collecting the message, the trailers giving grpc-status and
grpc-message. SETTINGS are acknowledged, PINGs answered, flow control kept both ways (our windows opened wide and
refilled; the server's windows and maximum frame size respected), RST_STREAM and GOAWAY fail the calls they concern.

Closed loop (`call`), the caller reads its own answer: one wait per call, as in a blocking stub. Open loop
(`start`), a reader greenlet per connection hands each answer to a callback, and streams are multiplexed on one
connection up to the server's SETTINGS_MAX_CONCURRENT_STREAMS (then another connection opens).
No TLS and no compression: a target that needs either uses grpcio (`--grpc-client grpcio`).
"""
from __future__ import annotations

import struct
from typing import Callable, Optional

import gevent
import gevent.event
import gevent.lock
from gevent import socket  # what Locust's monkey-patching gives too; here also without it (tests)
from hpack import Decoder
from hpack.exceptions import HPACKError

from loadtests.drive.http2 import (ACK, CONTINUATION, DATA, DEFAULT_FRAME, DEFAULT_WINDOW, END_HEADERS, END_STREAM,
                                   GOAWAY, HEADERS, LAST_STREAM_ID, MAX_WINDOW, OUR_MAX_FRAME, PADDED, PING, PREFACE,
                                   PRIORITY, RST_STREAM, SETTINGS, SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE,
                                   SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
                                   SETTINGS_MAX_FRAME_SIZE, STATUS_NAMES, WINDOW_UPDATE, GrpcError, Stream, frame,
                                   request_headers)


class Connection:
    """One HTTP/2 connection. `threaded`: a reader greenlet takes every answer (open loop); else `call` reads."""

    def __init__(self, address: tuple[str, int], connect_timeout_s: float, threaded: bool):
        self.sock = socket.create_connection(address, timeout=connect_timeout_s)
        self.sock.settimeout(None)  # answers are timed per call (call's deadline, open loop's drain), not per read
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder()
        self.decoded: dict[bytes, list] = {}  # header blocks that change no table -> their fields (see _decode)
        self.decoded_state: tuple = ()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.peer_window = DEFAULT_WINDOW  # connection-level window for what we send
        self.peer_initial = DEFAULT_WINDOW
        self.peer_frame = DEFAULT_FRAME
        self.peer_streams = 2 ** 31  # SETTINGS_MAX_CONCURRENT_STREAMS until the server says
        self.received = 0  # DATA bytes since we last refilled our connection window
        self.buffer = bytearray()
        self.header_block: Optional[tuple[int, int, bytearray]] = None  # (stream, flags, block) awaiting CONTINUATION
        self.closed: Optional[str] = None  # why no new stream may start here
        self.dead = False  # the socket is closed
        self.writing = gevent.lock.Semaphore()  # one writer at a time (gevent allows no two on a socket)
        self.window_opened = gevent.event.Event()
        settings = struct.pack(">HIHIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW,
                               SETTINGS_MAX_FRAME_SIZE, OUR_MAX_FRAME)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings)  # our windows wide open from the start
                          + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)))
        self.reader = gevent.spawn(self._read_forever) if threaded else None

    @property
    def room(self) -> bool:
        return self.closed is None and len(self.streams) < self.peer_streams and self.next_id < LAST_STREAM_ID - 2

    def start(self, headers: bytes, message: bytes, job, on_answer: Callable) -> None:
        """Send one call; on_answer(job, grpc status name or None, message bytes, error) runs when it ends."""
        stream_id = self.next_id
        self.next_id += 2
        stream = self.streams[stream_id] = Stream(job, on_answer, self.peer_initial)
        frames = [frame(HEADERS, END_HEADERS, stream_id, headers)]
        view = memoryview(message)
        sendable = max(0, min(len(view), stream.send_window, self.peer_window))
        frames.extend(self._data_frames(stream, stream_id, view[:sendable], last=sendable == len(view)))
        if sendable < len(view):
            stream.pending = view[sendable:]
        if not self._write(b"".join(frames)):
            return
        if stream.pending is not None and self.reader is not None:  # closed loop: `call` sends the rest itself
            gevent.spawn(self._send_pending, stream_id, stream)

    def _data_frames(self, stream: Stream, stream_id: int, view: memoryview, last: bool) -> list[bytes]:
        stream.send_window -= len(view)
        self.peer_window -= len(view)
        frames = []
        for at in range(0, len(view), self.peer_frame):
            chunk = view[at:at + self.peer_frame]
            end = last and at + len(chunk) == len(view)
            frames.append(frame(DATA, END_STREAM if end else 0, stream_id, bytes(chunk)))
        if last and not view:
            frames.append(frame(DATA, END_STREAM, stream_id))
        return frames

    def _send_pending(self, stream_id: int, stream: Stream) -> None:
        """The rest of a message larger than the server's windows: sent as WINDOW_UPDATEs open them."""
        while stream.pending is not None and not stream.done and not self.dead:
            sendable = min(len(stream.pending), stream.send_window, self.peer_window)
            if sendable <= 0:
                self.window_opened.clear()
                if self.reader is None:
                    self._read_some()  # closed loop: nobody else reads, so read the WINDOW_UPDATEs here
                else:
                    self.window_opened.wait()
                continue
            chunk, rest = stream.pending[:sendable], stream.pending[sendable:]
            stream.pending = rest if len(rest) else None
            self._write(b"".join(self._data_frames(stream, stream_id, chunk, last=stream.pending is None)))

    def _write(self, data: bytes) -> bool:
        try:
            with self.writing:
                self.sock.sendall(data)
        except OSError as exc:
            self._fail_all(f"the connection broke while sending ({exc})")
            return False
        return True

    def call(self, headers: bytes, message: bytes, timeout_s: Optional[float]) -> tuple[bytes, Optional[GrpcError]]:
        """Closed loop: send one call and read until it ends; (answer message, None) or (b"", the error)."""
        result: list = []
        self.start(headers, message, None, lambda job, status, body, error: result.append((body, error)))
        stream = self.streams.get(self.next_id - 2)
        if stream is not None and stream.pending is not None:
            self._send_pending(self.next_id - 2, stream)
        with gevent.Timeout(timeout_s, False):
            while not result and not self.dead:
                self._read_some()
        if not result:
            self.close(f"no answer within {timeout_s:g}s")
            return b"", GrpcError("DEADLINE_EXCEEDED", f"no answer within {timeout_s:g}s")
        return result[0]

    def _read_forever(self) -> None:
        while not self.dead:  # after a GOAWAY too, until the streams it lets finish have ended
            self._read_some()
            if self.closed is not None and not self.streams and not self.dead:
                self._fail_all(self.closed)

    def _read_some(self) -> None:
        try:
            chunk = self.sock.recv(262144)
        except OSError as exc:
            self._fail_all(f"the connection broke ({exc})")
            return
        self._take(chunk)

    def read_waiting(self) -> None:
        """Closed loop, before a call: read what the server sent while nobody was reading (SETTINGS, PING, GOAWAY),
        so the call obeys it, or goes to a new connection after a GOAWAY."""
        self.sock.settimeout(0.0)
        try:
            while not self.dead:
                try:
                    chunk = self.sock.recv(262144)
                except (BlockingIOError, InterruptedError, socket.timeout):
                    return
                except OSError as exc:
                    self._fail_all(f"the connection broke ({exc})")
                    return
                self._take(chunk)
        finally:
            if not self.dead:
                self.sock.settimeout(None)

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            self._fail_all("the server closed the connection")
            return
        self.buffer += chunk
        try:
            self._frames()
        except (HPACKError, ValueError, struct.error) as exc:
            self._fail_all(f"unreadable HTTP/2 from the server ({type(exc).__name__}: {exc})")

    def _frames(self) -> None:
        buffer = self.buffer
        at = 0
        replies = []
        while len(buffer) - at >= 9:
            length = int.from_bytes(buffer[at:at + 3], "big")
            if len(buffer) - at < 9 + length:
                break
            kind, flags = buffer[at + 3], buffer[at + 4]
            stream_id = int.from_bytes(buffer[at + 5:at + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[at + 9:at + 9 + length])
            at += 9 + length
            reply = self._frame_in(kind, flags, stream_id, payload)
            if reply:
                replies.append(reply)
        del buffer[:at]
        if self.received > MAX_WINDOW // 2:
            replies.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        if replies and not self.dead:
            self._write(b"".join(replies))

    def _frame_in(self, kind: int, flags: int, stream_id: int, payload: bytes) -> Optional[bytes]:
        if self.header_block is not None and kind != CONTINUATION:
            raise ValueError("a header block was interrupted by another frame")
        if kind == DATA:
            self.received += len(payload)
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.data += payload
                if flags & END_STREAM:
                    self._end(stream_id, stream)
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self.header_block = (stream_id, flags, bytearray(payload))
            else:
                if self.header_block is None or self.header_block[0] != stream_id:
                    raise ValueError("CONTINUATION without its HEADERS")
                self.header_block[2].extend(payload)
                flags = (self.header_block[1] & END_STREAM) | flags
            if flags & END_HEADERS:
                stream_id, first_flags, block = self.header_block
                self.header_block = None
                self._headers(stream_id, self._decode(bytes(block)), bool((first_flags | flags) & END_STREAM))
        elif kind == SETTINGS:
            if flags & ACK:
                return None
            for offset in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, offset)
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    for stream in self.streams.values():
                        stream.send_window += value - self.peer_initial
                    self.peer_initial = value
                    self.window_opened.set()
                elif key == SETTINGS_MAX_FRAME_SIZE:
                    self.peer_frame = value
                elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                    self.peer_streams = value
                elif key == SETTINGS_HEADER_TABLE_SIZE:
                    pass  # the size of *our* encoder's table: we never index, so nothing to do
            return frame(SETTINGS, ACK, 0)
        elif kind == PING:
            return None if flags & ACK else frame(PING, ACK, 0, payload)
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self.peer_window += increment
            elif stream_id in self.streams:
                self.streams[stream_id].send_window += increment
            self.window_opened.set()
        elif kind == RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                code = struct.unpack(">I", payload)[0]
                stream.status, stream.message = "UNAVAILABLE" if code == 7 else "INTERNAL", \
                    f"the server reset the stream (HTTP/2 error {code})"
                self._end(stream_id, stream)
        elif kind == GOAWAY:
            last, code = struct.unpack_from(">II", payload)
            reason = payload[8:].decode(errors="replace")
            self.closed = f"the server sent GOAWAY (HTTP/2 error {code}{': ' + reason if reason else ''})"
            for sid in [s for s in self.streams if s > (last & 0x7FFFFFFF)]:
                self._end(sid, self.streams[sid], GrpcError("UNAVAILABLE", self.closed))
        return None

    def _decode(self, block: bytes) -> list:
        """The header fields of a block, through the HPACK decoder, or remembered.

        A server sends the same few blocks for every call. A block whose decoding left the dynamic table as it
        was is remembered with the table's state; it is answered from memory while the table stays in that state
        (same bytes, same table: same fields, and still no change). A block that changes the table is decoded
        every time, and any change forgets what was remembered.
        """
        state = self._table_state()
        if state == self.decoded_state:
            fields = self.decoded.get(block)
            if fields is not None:
                return fields
        else:
            self.decoded.clear()
            self.decoded_state = state
        fields = self.decoder.decode(block, raw=True)
        if self._table_state() == state:
            self.decoded[block] = fields
        return fields

    def _table_state(self) -> tuple:
        table = self.decoder.header_table
        entries = table.dynamic_entries
        return len(entries), id(entries[0]) if entries else 0, table.maxsize

    def _headers(self, stream_id: int, fields: list, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        for name, value in fields:
            if name == b"grpc-status":
                code = int(value)
                stream.status = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else f"code {code}"
            elif name == b"grpc-message":
                from urllib.parse import unquote
                stream.message = unquote(value.decode(errors="replace"))
            elif name == b":status" and value != b"200":
                stream.status, stream.message = "UNKNOWN", f"HTTP status {value.decode(errors='replace')}"
        if end_stream:
            self._end(stream_id, stream)

    def _end(self, stream_id: int, stream: Stream, error: Optional[GrpcError] = None) -> None:
        del self.streams[stream_id]
        stream.done = True
        body = b""
        if error is None:
            if stream.status is None:
                error = GrpcError("INTERNAL", "the stream ended without a grpc-status")
            elif stream.status != "OK":
                error = GrpcError(stream.status, stream.message)
            elif len(stream.data) < 5 or stream.data[0]:
                error = GrpcError("INTERNAL", "the answer is not one uncompressed gRPC message")
            else:
                length = int.from_bytes(stream.data[1:5], "big")
                if len(stream.data) != 5 + length:
                    error = GrpcError("INTERNAL", f"a {length}-byte message arrived as {len(stream.data) - 5} bytes")
                else:
                    body = bytes(stream.data[5:])
        stream.on_answer(stream.job, stream.status, body, error)

    def _fail_all(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
        self.dead = True
        for stream_id in list(self.streams):
            self._end(stream_id, self.streams[stream_id], GrpcError("UNAVAILABLE", why))
        self.sock.close()
        self.window_opened.set()

    def close(self, why: str = "closed by the client") -> None:
        self._fail_all(why)
        if self.reader is not None and self.reader is not gevent.getcurrent():
            self.reader.kill(block=False)


class LeanGrpc:
    """Unary calls of one method on one target, over as many connections as the server's stream limit needs."""

    def __init__(self, target: str, method_path: str, timeout_s: float = 60.0):
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a gRPC target is host:port (got {target!r})")
        self.address = (host.strip("[]"), int(port))
        self.headers = request_headers(target, method_path, timeout_s)
        self.timeout_s = timeout_s
        self.connections: list[Connection] = []
        self._sync: Optional[Connection] = None

    def call(self, message: bytes) -> tuple[bytes, Optional[GrpcError]]:
        """Closed loop: one call on this client's own connection, read by the caller."""
        if self._sync is not None:
            self._sync.read_waiting()
        if self._sync is None or self._sync.closed is not None:
            if self._sync is not None:
                self._sync.close()
            try:
                self._sync = Connection(self.address, self.timeout_s, threaded=False)
            except OSError as exc:
                return b"", GrpcError("UNAVAILABLE", f"cannot connect to {self.address[0]}:{self.address[1]} ({exc})")
        return self._sync.call(self.headers, message, self.timeout_s)

    def start(self, message: bytes, job, on_answer: Callable) -> None:
        """Open loop: send one call and return; on_answer(job, status, body, error) when it ends."""
        conn = next((c for c in self.connections if c.room), None)
        if conn is None:
            self.connections = [c for c in self.connections if not c.dead]
            try:
                conn = Connection(self.address, self.timeout_s, threaded=True)
            except OSError as exc:
                on_answer(job, None, b"", GrpcError("UNAVAILABLE", f"cannot connect to {self.address[0]}:"
                                                                   f"{self.address[1]} ({exc})"))
                return
            self.connections.append(conn)
        conn.start(self.headers, message, job, on_answer)

    def close(self) -> None:
        for conn in self.connections + ([self._sync] if self._sync else []):
            conn.close()
        self.connections.clear()
        self._sync = None
