"""A unary gRPC client on the `h2` library's HTTP/2 state machine, for `make perf-cost`: what a library receive
path costs per call against the lean client's own (loadtests/drive/leangrpc.py).

Both run on a gevent socket with TCP_NODELAY, send the same length-prefixed PredictRequest and open their receive
windows wide, so the difference is the HTTP/2 work: here h2 frames, HPACK-codes, keeps the flow-control and stream
state and turns every frame into event objects; the lean client sends pre-rendered frames and reads frames with its
own small state machine.
"""
from __future__ import annotations

from typing import Optional

import h2.config
import h2.connection
import h2.events
import h2.settings
from gevent import socket

from loadtests.drive.http2 import MAX_WINDOW
from loadtests.drive.wire import PREDICT_METHOD


class H2LibraryGrpc:
    """Closed-loop unary Predict calls on one connection, one at a time (as LeanGrpc.call)."""

    def __init__(self, target: str, timeout_s: float = 60.0):
        host, _, port = target.rpartition(":")
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0,
                                   h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW})
        self.conn.increment_flow_control_window(MAX_WINDOW - self.conn.inbound_flow_control_window)
        self.sock.sendall(self.conn.data_to_send())
        self.headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PREDICT_METHOD.encode()),
                        (b":authority", target.encode()), (b"content-type", b"application/grpc"),
                        (b"te", b"trailers"), (b"grpc-timeout", b"%dS" % int(timeout_s))]

    def call(self, framed: bytes) -> tuple[bytes, Optional[str]]:
        """Send one length-prefixed request; (the answer's message, None) or (b"", what went wrong)."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, self.headers)
        pending = memoryview(framed)
        answer, trailers, ended = bytearray(), {}, False
        while not ended:
            while pending and self.conn.local_flow_control_window(stream_id) > 0:  # as much as the server allows
                size = min(len(pending), self.conn.local_flow_control_window(stream_id),
                           self.conn.max_outbound_frame_size)
                self.conn.send_data(stream_id, bytes(pending[:size]), end_stream=size == len(pending))
                pending = pending[size:]
            outgoing = self.conn.data_to_send()
            if outgoing:
                self.sock.sendall(outgoing)
            data = self.sock.recv(65536)
            if not data:
                return b"", "the server closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    answer += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    trailers.update(dict(event.headers))
                elif isinstance(event, h2.events.StreamReset):
                    return b"", f"the server reset the stream (error code {event.error_code})"
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return b"", f"the server ended the connection (GOAWAY, error code {event.error_code})"
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    ended = True
        outgoing = self.conn.data_to_send()  # window updates the answer's data made due
        if outgoing:
            self.sock.sendall(outgoing)
        status = trailers.get(b"grpc-status")
        if status != b"0":
            return b"", f"grpc-status {status!r}: {trailers.get(b'grpc-message', b'').decode(errors='replace')}"
        if len(answer) < 5 or answer[0] or int.from_bytes(answer[1:5], "big") != len(answer) - 5:
            return b"", "the answer is not one uncompressed gRPC message"
        return bytes(answer[5:]), None

    def close(self) -> None:
        self.conn.close_connection()
        try:
            self.sock.sendall(self.conn.data_to_send())
        except OSError:
            pass
        self.sock.close()
