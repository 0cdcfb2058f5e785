"""The embedded REST server's socket: what TF Serving's HTTP server does with a burst of new connections."""
from __future__ import annotations

import socket

from server.rest import RestServer


class _Api:
    def handle(self, method, path, body, headers):
        return 200, {"Content-Type": "application/json"}, b'{"ok": true}'


def test_a_burst_of_new_connections_waits_in_the_listen_backlog():
    """Connections the server has not accepted yet wait in the kernel's backlog (128, libevent's default, as TF
    Serving's evhttp binds it). With socketserver's 5, an open-loop client under overload, which opens a connection
    per request in flight, lost SYNs and waited 1, 3, 7 s to retransmit: REST throughput fell 30-fold."""
    server = RestServer(_Api(), "127.0.0.1", 0, 4, 1 << 20)  # not accepting yet: every connection must wait
    clients = []
    try:
        for number in range(100):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=3)  # a lost SYN: timeout
            clients.append(client)
        server.start()
        for client in clients:  # each then gets its answer once the server accepts
            client.sendall(b"GET /v1/models/x HTTP/1.1\r\nHost: t\r\n\r\n")
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200") or False
    finally:
        for client in clients:
            client.close()
        if server._thread is not None:
            server.stop()
