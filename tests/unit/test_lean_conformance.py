"""The lean clients' protocol edges, against servers written with the python-hyper libraries (hyperframe for
HTTP/2 frames, h11 for HTTP/1.1), not with grpcio or our own server, which never send most of them.

HTTP/2 (loadtests/drive/leangrpc.py): padded and prioritised HEADERS, header blocks split over CONTINUATION frames,
padded DATA, RST_STREAM, GOAWAY with streams on both sides of its last id, SETTINGS that shrink the frame size and
the stream window mid-connection, PING. HTTP/1.1 (loadtests/drive/users.py LeanHttp): Content-Length, chunked bodies
with extensions and trailers, bodies delimited by closing the connection, and answers that have no body."""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Optional

import gevent
import h11
import pytest
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame,
                              SettingsFrame, WindowUpdateFrame)

from loadtests.drive.http2 import PREFACE, grpc_message
from loadtests.drive.leangrpc import LeanGrpc
from loadtests.drive.leanhttp import LeanHttp

PATH = "/tensorflow.serving.PredictionService/Predict"


# ---------------------------------------------------------------------------------------------- HTTP/2


def accept_in_threads(listener: socket.socket, serve: Callable) -> None:
    """Accept connections until the listener closes, each served by `serve(sock)` in a thread of its own."""
    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(sock,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()


class H2Script:
    """An HTTP/2 server on 127.0.0.1 that reads the client's frames with hyperframe and answers each finished
    request with `respond(conn, stream_id, message)`, which writes whatever frames the test wants."""

    def __init__(self, respond: Callable, settings: Optional[dict] = None):
        self.respond, self.settings = respond, settings or {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[H2Conn] = []
        accept_in_threads(self.listener, self._serve)

    def _serve(self, sock: socket.socket) -> None:
        conn = H2Conn(sock, self)
        self.connections.append(conn)
        conn.serve()

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.sock.close()


class H2Conn:
    def __init__(self, sock: socket.socket, script: H2Script):
        self.sock, self.script = sock, script
        self.encoder = Encoder()
        self.seen: list[Frame] = []  # every frame the client sent
        self.bodies: dict[int, bytearray] = {}
        self.lock = threading.Lock()

    def send(self, *frames: Frame) -> None:
        with self.lock:
            self.sock.sendall(b"".join(f.serialize() for f in frames))

    def block(self, fields) -> bytes:
        return self.encoder.encode(fields)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def serve(self) -> None:
        try:
            assert self._read(len(PREFACE)) == PREFACE
            self.send(SettingsFrame(0, settings=self.script.settings))
            while True:
                frame, length = Frame.parse_frame_header(memoryview(self._read(9)))
                frame.parse_body(memoryview(self._read(length)))
                self.seen.append(frame)
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.send(SettingsFrame(0, flags=["ACK"]))
                elif isinstance(frame, DataFrame):
                    self.bodies.setdefault(frame.stream_id, bytearray()).extend(frame.data)
                    if frame.flow_controlled_length:  # keep the client's windows open, as a server does
                        self.send(WindowUpdateFrame(0, window_increment=frame.flow_controlled_length),
                                  WindowUpdateFrame(frame.stream_id, window_increment=frame.flow_controlled_length))
                    if "END_STREAM" in frame.flags:
                        self.script.respond(self, frame.stream_id, bytes(self.bodies.pop(frame.stream_id))[5:])
        except (OSError, ConnectionError):
            pass


def answer_frames(conn: H2Conn, stream_id: int, message: bytes, status: int = 0, text: str = "") -> list[Frame]:
    """A plain gRPC answer: HEADERS, one DATA, trailers."""
    trailers = [("grpc-status", str(status))] + ([("grpc-message", text)] if text else [])
    return [HeadersFrame(stream_id, conn.block([(":status", "200"), ("content-type", "application/grpc")]),
                         flags=["END_HEADERS"]),
            DataFrame(stream_id, grpc_message(message)),
            HeadersFrame(stream_id, conn.block(trailers), flags=["END_HEADERS", "END_STREAM"])]


def echo(conn: H2Conn, stream_id: int, message: bytes) -> None:
    conn.send(*answer_frames(conn, stream_id, b"echo " + message))


@pytest.fixture
def h2server():
    made = []

    def make(respond=echo, settings=None) -> H2Script:
        made.append(H2Script(respond, settings))
        return made[-1]
    yield make
    for script in made:
        script.close()


def _open_loop(client: LeanGrpc, messages: list[bytes], timeout_s: float = 10.0) -> dict:
    seen = {}
    for i, message in enumerate(messages):
        client.start(grpc_message(message), i, lambda job, status, body, error: seen.__setitem__(job, (body, error)))
    with gevent.Timeout(timeout_s):
        while len(seen) < len(messages):
            gevent.sleep(0.005)
    return seen


def test_padding_priority_and_continuation_frames_are_read_as_one_answer(h2server):
    def respond(conn, stream_id, message):
        head = conn.block([(":status", "200"), ("content-type", "application/grpc"), ("x-filler", "f" * 300)])
        headers = HeadersFrame(stream_id, head[:7], flags=["PADDED", "PRIORITY"], pad_length=9, depends_on=0,
                               stream_weight=200)
        framed = grpc_message(b"answer to " + message)
        data = [DataFrame(stream_id, framed[:6], flags=["PADDED"], pad_length=17),
                DataFrame(stream_id, framed[6:], flags=["PADDED"], pad_length=0)]
        tail = conn.block([("grpc-status", "0"), ("x-trailer", "t" * 200)])
        conn.send(headers, ContinuationFrame(stream_id, head[7:40]), ContinuationFrame(stream_id, head[40:],
                                                                                        flags=["END_HEADERS"]),
                  *data, HeadersFrame(stream_id, tail[:3], flags=["END_STREAM"]),
                  ContinuationFrame(stream_id, tail[3:], flags=["END_HEADERS"]))
    server = h2server(respond)
    client = LeanGrpc(server.target, PATH, timeout_s=10)
    try:
        for i in range(3):  # closed loop: the header blocks go through the decoder's table, then from memory
            assert client.call(grpc_message(b"call %d" % i)) == (b"answer to call %d" % i, None)
        seen = _open_loop(client, [b"open %d" % i for i in range(4)])
        assert {job: body for job, (body, error) in seen.items()} == {i: b"answer to open %d" % i for i in range(4)}
        assert all(error is None for _body, error in seen.values())
    finally:
        client.close()


def test_a_header_block_interrupted_or_continued_on_another_stream_fails_the_calls_not_the_client(h2server):
    def respond(conn, stream_id, message):
        head = conn.block([(":status", "200")])
        conn.send(HeadersFrame(stream_id, head), ContinuationFrame(stream_id + 2, b"", flags=["END_HEADERS"]))
    client = LeanGrpc(h2server(respond).target, PATH, timeout_s=10)
    try:
        body, error = client.call(grpc_message(b"x"))
        assert body == b"" and error.code == "UNAVAILABLE" and "unreadable HTTP/2" in error.details
        assert "CONTINUATION without its HEADERS" in error.details
    finally:
        client.close()


@pytest.mark.parametrize("code, expected", [(7, "UNAVAILABLE"), (2, "INTERNAL")])
def test_rst_stream_fails_its_call_and_the_connection_goes_on(h2server, code, expected):
    def respond(conn, stream_id, message):
        if message == b"reset":
            conn.send(RstStreamFrame(stream_id, error_code=code))
        else:
            echo(conn, stream_id, message)
    server = h2server(respond)
    client = LeanGrpc(server.target, PATH, timeout_s=10)
    try:
        body, error = client.call(grpc_message(b"reset"))
        assert body == b"" and error.code == expected and f"HTTP/2 error {code}" in error.details
        assert client.call(grpc_message(b"after")) == (b"echo after", None)
        assert len(server.connections) == 1  # the same connection
    finally:
        client.close()


def test_goaway_lets_the_streams_below_its_last_id_finish_and_new_calls_open_a_connection(h2server):
    held = []

    def respond(conn, stream_id, message):
        if message not in (b"first", b"second"):
            return echo(conn, stream_id, message)
        held.append((conn, stream_id, message))
        if len(held) == 2:  # both in flight: refuse the later one, then answer the earlier one
            first = held[0]
            conn.send(GoAwayFrame(0, last_stream_id=first[1], error_code=0, additional_data=b"draining"))
            echo(*first)
    server = h2server(respond)
    client = LeanGrpc(server.target, PATH, timeout_s=10)
    try:
        seen = _open_loop(client, [b"first", b"second"])
        assert seen[0] == (b"echo first", None)
        body, error = seen[1]
        assert body == b"" and error.code == "UNAVAILABLE" and "GOAWAY" in error.details and "draining" in error.details
        assert _open_loop(client, [b"third"]) == {0: (b"echo third", None)}
        assert len(server.connections) == 2  # the old connection took no new stream: a second one opened
    finally:
        client.close()


def _readable(sock, timeout_s: float = 10.0) -> None:
    """Wait until what the server sent has reached the client's socket (nothing reads it between closed-loop calls)."""
    import select
    assert select.select([sock], [], [], timeout_s)[0], "nothing arrived"


def test_a_goaway_that_arrives_between_closed_loop_calls_sends_the_next_call_to_a_new_connection(h2server):
    server = h2server()
    client = LeanGrpc(server.target, PATH, timeout_s=10)
    try:
        assert client.call(grpc_message(b"one")) == (b"echo one", None)
        server.connections[0].send(GoAwayFrame(0, last_stream_id=1, error_code=0))
        _readable(client._sync.sock)
        assert client.call(grpc_message(b"two")) == (b"echo two", None)
        assert len(server.connections) == 2
    finally:
        client.close()


def _shrink_and_ping(conn: H2Conn) -> None:
    conn.send(SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16384, SettingsFrame.INITIAL_WINDOW_SIZE: 1000}),
              PingFrame(0, opaque_data=b"12345678"))


def _obeyed(conn: H2Conn, first: int, size: int) -> None:
    sent = conn.seen[first:]
    acks = [f for f in sent if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    pongs = [f for f in sent if isinstance(f, PingFrame) and "ACK" in f.flags]
    assert acks and pongs and pongs[0].opaque_data == b"12345678"
    data = [f for f in sent if isinstance(f, DataFrame) and f.data]
    assert sum(len(f.data) for f in data) == size
    assert max(len(f.data) for f in data) <= 1000  # never past the stream's window of 1000
    assert len(data) >= size // 1000


def test_settings_that_shrink_the_frame_size_and_window_between_calls_are_obeyed_and_acknowledged(h2server):
    server = h2server()
    client = LeanGrpc(server.target, PATH, timeout_s=20)
    big = bytes(range(256)) * 300  # 76,800 bytes: many windows of 1000 and frames of at most 16384
    try:
        assert client.call(grpc_message(b"before")) == (b"echo before", None)
        (conn,) = server.connections
        first = len(conn.seen)
        _shrink_and_ping(conn)
        _readable(client._sync.sock)
        assert client.call(grpc_message(big)) == (b"echo " + big, None)
        _obeyed(conn, first, len(big) + 5)
    finally:
        client.close()


def test_settings_that_shrink_the_window_in_open_loop_are_obeyed_by_every_later_stream(h2server):
    server = h2server()
    client = LeanGrpc(server.target, PATH, timeout_s=20)
    big = bytes(range(256)) * 100
    try:
        assert _open_loop(client, [b"before"]) == {0: (b"echo before", None)}
        (conn,) = server.connections
        first = len(conn.seen)
        _shrink_and_ping(conn)
        with gevent.Timeout(10):  # the reader greenlet takes the SETTINGS and acknowledges them
            while not any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in conn.seen[first:]):
                gevent.sleep(0.005)
        seen = _open_loop(client, [big, big, big])
        assert seen == {i: (b"echo " + big, None) for i in range(3)}
        _obeyed(conn, first, 3 * (len(big) + 5))
    finally:
        client.close()


def test_a_large_answer_over_the_servers_frame_size_and_a_grpc_error_with_an_encoded_message(h2server):
    def respond(conn, stream_id, message):
        if message == b"fail":
            conn.send(*answer_frames(conn, stream_id, b"", status=5, text="model%20not%20found%3A%20x"))
            return
        framed = grpc_message(b"z" * 100_000)
        head, _data, tail = answer_frames(conn, stream_id, b"")
        conn.send(head, *[DataFrame(stream_id, framed[i:i + 16384]) for i in range(0, len(framed), 16384)], tail)
    client = LeanGrpc(h2server(respond).target, PATH, timeout_s=10)
    try:
        assert client.call(grpc_message(b"big")) == (b"z" * 100_000, None)
        body, error = client.call(grpc_message(b"fail"))
        assert body == b"" and error.code == "NOT_FOUND" and error.details == "model not found: x"
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------- HTTP/1.1


class H11Script:
    """An HTTP/1.1 server on 127.0.0.1 written with h11 (or raw bytes where h11 will not write a framing, such as
    a close-delimited body to an HTTP/1.1 client): `answer(request_target, body)` returns what to send."""

    def __init__(self, answer: Callable):
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        accept_in_threads(self.listener, self._serve)

    def _serve(self, sock: socket.socket) -> None:
        self.accepted += 1
        conn = h11.Connection(h11.SERVER)
        request, body = None, b""
        with sock:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    out = self.answer(request.target.decode(), body)
                    if isinstance(out, bytes):  # raw: the test writes the framing itself, then closes
                        sock.sendall(out)
                        return
                    if isinstance(out[0], bytes):  # raw pieces written 50 ms apart; the connection is kept
                        for piece in out:
                            sock.sendall(piece)
                            time.sleep(0.05)
                        conn = h11.Connection(h11.SERVER)  # h11 did not see the raw answer: a fresh state
                        continue
                    for item in out:
                        sock.sendall(conn.send(item))
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    def close(self) -> None:
        self.listener.close()


def _request(port: int, path: str, body: bytes = b"{}") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _answers(target: str, body: bytes):
    payload = b"answer to " + body
    if target == "/length":
        return [h11.Response(status_code=200, headers=[("Content-Length", str(len(payload)))]), h11.Data(data=payload),
                h11.EndOfMessage()]
    if target == "/chunked":  # three chunks, then trailers
        return [h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]),
                h11.Data(data=payload[:4]), h11.Data(data=payload[4:9]), h11.Data(data=payload[9:]),
                h11.EndOfMessage(headers=[("X-Checksum", "abc"), ("X-More", "def")])]
    if target == "/chunked-ext":  # a chunk extension, written by hand: h11 writes none
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                + b"%x;name=value\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n")
    if target == "/close":  # no length, no chunks: the body ends where the connection does
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + payload
    if target == "/http10":
        return b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    if target == "/trailers-later":  # the trailer section arrives in a later packet than the last chunk
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(payload) + payload
                + b"\r\n0\r\n", b"X-Checksum: abc\r\n", b"\r\n"]
    if target == "/continue":  # an interim answer first
        return (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive, "
                b"close\r\n\r\n" % len(payload) + payload)
    if target == "/nobody":
        return [h11.Response(status_code=204, headers=[]), h11.EndOfMessage()]
    if target == "/refused":
        return [h11.Response(status_code=400, headers=[("Content-Length", "11"), ("Connection", "close")]),
                h11.Data(data=b"bad request"), h11.EndOfMessage()]
    raise AssertionError(target)


@pytest.fixture
def h11server():
    server = H11Script(_answers)
    yield server
    server.close()


@pytest.mark.parametrize("path, keeps", [("/length", True), ("/chunked", True), ("/chunked-ext", False),
                                         ("/close", False), ("/http10", False), ("/continue", False)])
def test_every_body_framing_reads_the_whole_answer_and_keeps_the_connection_only_when_allowed(h11server, path,
                                                                                              keeps):
    client = LeanHttp("127.0.0.1", h11server.port, timeout_s=10)
    try:
        for i in range(3):
            status, body = client.request(_request(h11server.port, path, b"%d" % i))
            assert (status, body) == (200, b"answer to %d" % i)
        assert h11server.accepted == (1 if keeps else 3)
    finally:
        client.close()


def test_trailers_after_the_last_chunk_are_read_so_the_next_answer_starts_clean(h11server):
    """The trailer section must be consumed with its answer, or its bytes would be read as the next status line."""
    client = LeanHttp("127.0.0.1", h11server.port, timeout_s=10)
    try:
        for path in ("/chunked", "/length", "/trailers-later", "/chunked", "/trailers-later", "/length"):
            assert client.request(_request(h11server.port, path, b"q")) == (200, b"answer to q")
        assert h11server.accepted == 1
    finally:
        client.close()


def test_an_answer_without_a_body_does_not_wait_for_one(h11server):
    client = LeanHttp("127.0.0.1", h11server.port, timeout_s=5)
    try:
        assert client.request(_request(h11server.port, "/nobody")) == (204, b"")
        assert client.request(_request(h11server.port, "/length", b"next")) == (200, b"answer to next")
        assert h11server.accepted == 1
    finally:
        client.close()


def test_open_loop_reads_every_framing_and_a_connection_close_answer(h11server):
    client = LeanHttp("127.0.0.1", h11server.port, timeout_s=10)
    seen = {}
    paths = ["/length", "/chunked", "/close", "/http10", "/nobody", "/refused", "/chunked-ext"]
    try:
        for i, path in enumerate(paths):
            client.start(_request(h11server.port, path, b"%d" % i), i,
                         lambda job, status, body, error: seen.__setitem__(job, (status, body, error)))
        with gevent.Timeout(10):
            while len(seen) < len(paths):
                gevent.sleep(0.005)
        expected = {0: (200, b"answer to 0"), 1: (200, b"answer to 1"), 2: (200, b"answer to 2"),
                    3: (200, b"answer to 3"), 4: (204, b""), 5: (400, b"bad request"), 6: (200, b"answer to 6")}
        assert {job: (status, body) for job, (status, body, _e) in seen.items()} == expected
        assert all(error is None for _s, _b, error in seen.values())
    finally:
        client.close()
