"""Keep-alive HTTP/1.1 with pre-rendered requests: RestUser's timed path (gevent only, no Locust).

A request is one write of bytes rendered before the run; an answer is read as RFC 9112 frames it: a Content-Length
body, a chunked body (extensions ignored, trailers read and dropped), a body that runs to the end of the connection
(neither given), or none at all (1xx, 204 and 304 answers). A connection is kept for the next request unless the
answer says `Connection: close`, is HTTP/1.0, or ended its body by closing.
"""
from __future__ import annotations

from typing import Callable, Optional

import gevent
from gevent import socket  # what Locust's monkey-patching gives too; here also without it (tests)

NO_BODY = (204, 304)


class LeanHttp:
    """Keep-alive HTTP/1.1 connections to one host, sending pre-rendered requests: REST's timed path.

    Each request is one `sendall` of bytes rendered before the run (request line, headers and body) and a read of
    the status line, the headers and a Content-Length (or chunked) body: no per-request header objects, URL
    parsing or redirect handling, which is where a general HTTP client spends its time. Idle connections are
    reused; open loop, a request finding none idle opens another (up to the run's in-flight cap).
    """

    def __init__(self, host: str, port: int, timeout_s: float = 60.0):
        self.address = (host, port)
        self.timeout_s = timeout_s
        self.idle: list = []  # closed loop: idle sockets
        self.idle_conns: list[_Conn] = []  # open loop: idle connections, each with its reader parked in recv
        self.conns: set[_Conn] = set()

    def _connect(self, timeout_s: Optional[float]):
        """A connected socket whose reads time out after timeout_s. Open loop passes None: a reader parked on an
        idle connection must not time out, and an answer that never comes is counted by the window's drain."""
        sock = socket.create_connection(self.address, timeout=self.timeout_s)
        sock.settimeout(timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, raw: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; raises OSError (or ValueError for a malformed answer)."""
        sock = self.idle.pop() if self.idle else self._connect(self.timeout_s)
        try:
            sock.sendall(raw)
            status, body, keep = _read_response(sock)
        except BaseException:
            sock.close()
            raise
        if keep:
            self.idle.append(sock)
        else:
            sock.close()
        return status, body

    def start(self, raw: bytes, job, on_answer: Callable) -> None:
        """Open loop: write one request and return; `on_answer(job, status, body, error)` runs when it is answered.

        Each connection has a reader greenlet parked in recv: the answer wakes it, it hands the connection back to
        the idle list and calls on_answer. So a request costs the driver one write, and the answer one wake-up,
        as in closed loop. A connection the server closes while idle is dropped.
        """
        conn = self.idle_conns.pop() if self.idle_conns else None
        if conn is None:
            try:
                conn = _Conn(self._connect(timeout_s=None))
            except OSError as exc:
                on_answer(job, 0, b"", exc)
                return
            conn.reader = gevent.spawn(self._read_answers, conn, on_answer)
            self.conns.add(conn)
        conn.job = job
        try:
            sent = conn.sock.send(raw)  # does not wait: an idle connection's send buffer is empty
        except OSError as exc:
            self._drop(conn)
            conn.job = None
            on_answer(job, 0, b"", exc)
            return
        if sent < len(raw):  # a large body: the rest goes out in a greenlet, so the driver keeps its schedule
            gevent.spawn(self._send_rest, conn, raw, sent)

    def _send_rest(self, conn, raw: bytes, sent: int) -> None:
        try:
            conn.sock.sendall(memoryview(raw)[sent:])
        except OSError:
            conn.sock.close()  # the reader's recv fails and reports it

    def _read_answers(self, conn, on_answer: Callable) -> None:
        while True:
            try:
                status, body, keep = _read_response(conn.sock)
            except (OSError, ValueError) as exc:
                job, conn.job = conn.job, None
                self._drop(conn)
                if job is not None:
                    on_answer(job, 0, b"", exc)
                return
            job, conn.job = conn.job, None
            if keep:
                self.idle_conns.append(conn)
            else:
                self._drop(conn)
            on_answer(job, status, body, None)
            if not keep:
                return

    def _drop(self, conn) -> None:
        if conn in self.idle_conns:
            self.idle_conns.remove(conn)
        self.conns.discard(conn)
        conn.sock.close()

    def close(self) -> None:
        for sock in self.idle:
            sock.close()
        self.idle.clear()
        for conn in list(self.conns):
            conn.sock.close()
            conn.reader.kill(block=False)
        self.conns.clear()
        self.idle_conns.clear()


class _Conn:
    """An open-loop connection: its socket, its reader greenlet and the request it is waiting on."""
    __slots__ = ("sock", "reader", "job")

    def __init__(self, sock):
        self.sock = sock
        self.reader = None
        self.job = None


def _read_head(sock, data: bytes) -> tuple[int, dict, bool, bytes]:
    """(status, headers, whether the connection may be kept, what followed the head) of the next answer."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before answering")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    tokens = {t.strip() for t in headers.get(b"connection", b"").lower().split(b",")}
    keep = b"close" not in tokens and parts[0] != b"HTTP/1.0"
    return int(parts[1]), headers, keep, rest


def _read_response(sock) -> tuple[int, bytes, bool]:
    status, headers, keep, rest = _read_head(sock, b"")
    while 100 <= status < 200:  # interim answers (100 Continue, 103 Early Hints): the real one follows
        status, headers, keep, rest = _read_head(sock, rest)
    if status in NO_BODY:
        return status, b"", keep
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(rest) < length:
            chunk = sock.recv(max(65536, length - len(rest)))
            if not chunk:
                raise ConnectionError("the server closed the connection in the middle of an answer")
            rest += chunk
        return status, rest[:length], keep
    if headers.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += _recv(sock)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)  # a chunk extension is ignored
            if size == 0:  # the trailer section: header lines up to an empty one, read and dropped
                while not (rest.startswith(b"\r\n") or b"\r\n\r\n" in rest):
                    rest += _recv(sock)
                return status, body, keep
            while len(rest) < size + 2:
                rest += _recv(sock)
            body, rest = body + rest[:size], rest[size + 2:]
    while True:  # neither: the body runs to the end of the connection
        chunk = sock.recv(65536)
        if not chunk:
            return status, rest, False
        rest += chunk


def _recv(sock) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection in the middle of an answer")
    return chunk
