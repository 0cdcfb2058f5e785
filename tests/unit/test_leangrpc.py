"""The lean gRPC client (loadtests/drive/leangrpc.py) against a real grpcio server: answers, errors, flow control."""
from __future__ import annotations

import hashlib
from concurrent import futures

import gevent
import grpc
import pytest
from hpack import Decoder

from loadtests.drive.http2 import GrpcError, _integer, grpc_message, request_headers
from loadtests.drive.leangrpc import LeanGrpc

PATH = "/tensorflow.serving.PredictionService/Predict"


def _answer(request: bytes, context) -> bytes:
    """The test server's Predict: raw bytes in, raw bytes out. The request says what to do."""
    if request.startswith(b"fail:"):
        context.abort(grpc.StatusCode.NOT_FOUND, request[5:].decode())
    if request.startswith(b"big:"):
        return hashlib.sha256(request).digest() * (int(request[4:12]) // 32)
    return b"answer to " + request


@pytest.fixture(scope="module")
def server():
    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(_answer)})
    srv = grpc.server(futures.ThreadPoolExecutor(8), handlers=[handler],
                      options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(0)


def test_hpack_integers_and_the_request_block_decode_as_written():
    assert _integer(10, 5) == b"\x0a"  # RFC 7541 C.1.1
    assert _integer(1337, 5) == b"\x1f\x9a\x0a"  # C.1.2
    assert _integer(42, 8) == b"\x2a"  # C.1.3
    fields = Decoder().decode(request_headers("127.0.0.1:8500", PATH, 60.0))
    assert fields == [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "127.0.0.1:8500"),
                      ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "60S")]
    assert ("grpc-timeout", "1S") in Decoder().decode(request_headers("h:1", PATH, 0.2))
    assert grpc_message(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_closed_loop_calls_get_their_own_answers(server):
    client = LeanGrpc(server, PATH)
    try:
        for i in range(20):
            body, error = client.call(grpc_message(b"request %d" % i))
            assert error is None and body == b"answer to request %d" % i
    finally:
        client.close()


def test_messages_beyond_the_windows_and_frame_size_go_both_ways(server):
    """A 3 MB request (more than the server's 64 KiB initial window) and a 4 MB answer (many DATA frames)."""
    client = LeanGrpc(server, PATH)
    try:
        request = b"big:%08d" % (4 << 20) + b"x" * (3 << 20)
        body, error = client.call(grpc_message(request))
        assert error is None
        assert len(body) == 4 << 20 and body[:32] == hashlib.sha256(request).digest()
        body, error = client.call(grpc_message(b"small after big"))  # the connection is still in step
        assert (body, error) == (b"answer to small after big", None)
    finally:
        client.close()


def test_a_grpc_error_is_its_status_name_and_message(server):
    client = LeanGrpc(server, PATH)
    try:
        body, error = client.call(grpc_message("fail:no model 'résumé' at 100%".encode()))
        assert body == b"" and isinstance(error, GrpcError)
        assert error.code == "NOT_FOUND" and error.details == "no model 'résumé' at 100%"
        assert client.call(grpc_message(b"next"))[0] == b"answer to next"  # the stream failed, not the connection
    finally:
        client.close()


def test_open_loop_streams_are_multiplexed_and_each_answer_finds_its_call(server):
    client = LeanGrpc(server, PATH)
    answers = {}
    try:
        for i in range(200):
            client.start(grpc_message(b"call %d" % i), i, lambda job, status, body, error: answers.__setitem__(
                job, (status, body, error)))
        with gevent.Timeout(30):
            while len(answers) < 200:
                gevent.sleep(0.01)
        assert all(answers[i] == ("OK", b"answer to call %d" % i, None) for i in range(200))
        assert len(client.connections) == 1
    finally:
        client.close()


def test_no_server_is_an_unavailable_answer_not_an_exception():
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes
    client = LeanGrpc(f"127.0.0.1:{port}", PATH)
    body, error = client.call(grpc_message(b"x"))
    assert body == b"" and error.code == "UNAVAILABLE" and "cannot connect" in error.details
    seen = []
    client.start(grpc_message(b"x"), "job", lambda job, status, body, error: seen.append((job, error.code)))
    assert seen == [("job", "UNAVAILABLE")]
    with pytest.raises(ValueError, match="host:port"):
        LeanGrpc("no-port", PATH)


def test_a_server_that_stops_mid_call_fails_the_call_and_the_client_reconnects_later():
    import time

    def slow(request: bytes, context) -> bytes:
        time.sleep(1.0)
        return b"late"

    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(slow)})
    srv = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    client = LeanGrpc(f"127.0.0.1:{port}", PATH)
    seen = []
    try:
        client.start(grpc_message(b"x"), 1, lambda job, status, body, error: seen.append(error))
        gevent.sleep(0.2)
        srv.stop(0)
        with gevent.Timeout(10):
            while not seen:
                gevent.sleep(0.01)
        assert isinstance(seen[0], GrpcError) and seen[0].code in ("UNAVAILABLE", "CANCELLED", "INTERNAL")
        client.start(grpc_message(b"x"), 2, lambda job, status, body, error: seen.append(error))
        with gevent.Timeout(10):
            while len(seen) < 2:
                gevent.sleep(0.01)
        assert seen[1].code == "UNAVAILABLE"  # a new connection is tried, and refused
    finally:
        client.close()


def test_remembered_header_blocks_give_what_the_decoder_gives_as_the_table_changes():
    from hpack import Encoder

    from loadtests.drive.leangrpc import Connection

    conn = Connection.__new__(Connection)  # only the decoding state: no socket
    conn.decoder, conn.decoded, conn.decoded_state = Decoder(), {}, ()
    reference, encoder = Decoder(), Encoder()
    status = [(":status", "200"), ("content-type", "application/grpc")]
    trailers = [("grpc-status", "0")]
    lists = [status, status, trailers, status, trailers + [("x-n", "1")], trailers + [("x-n", "2")], status,
             trailers + [("x-n", "1")], status, trailers, status, trailers]  # ends in a server's steady state
    remembered = 0
    for headers in lists:
        block = encoder.encode(headers)
        remembered += block in conn.decoded and conn._table_state() == conn.decoded_state
        got = conn._decode(block)
        assert got == reference.decode(block, raw=True)
        assert [(n.decode(), v.decode()) for n, v in got] == headers
    assert remembered >= 3  # the steady state's repeated blocks came from memory


def test_open_loop_large_messages_wait_for_the_servers_windows_and_share_the_connection(server, monkeypatch):
    """Five 2 MB requests started at once on one connection: the rest of each goes out as windows open."""
    from loadtests.drive.leangrpc import Connection

    waited = []
    send_pending = Connection._send_pending
    monkeypatch.setattr(Connection, "_send_pending", lambda self, *a: (waited.append(a[0]), send_pending(self, *a)))
    client = LeanGrpc(server, PATH)
    answers = {}
    try:
        requests = [b"big:%08d" % 64 + bytes([i]) * (2 << 20) for i in range(5)]
        for i, request in enumerate(requests):
            client.start(grpc_message(request), i, lambda job, status, body, error: answers.__setitem__(job, (body, error)))
        client.start(grpc_message(b"small"), "small", lambda job, status, body, error: answers.__setitem__(job, (body, error)))
        with gevent.Timeout(60):
            while len(answers) < 6:
                gevent.sleep(0.01)
        for i, request in enumerate(requests):
            assert answers[i] == (hashlib.sha256(request).digest() * 2, None)
        assert answers["small"] == (b"answer to small", None)
        assert waited  # some requests were larger than the windows allowed at once
    finally:
        client.close()
