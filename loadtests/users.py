"""Locust users: RestUser (FastHttpUser) and GrpcUser (official tensorflow-serving-api stubs).

Both send the prepared payloads of the run's LoadContext in the same order, check every answer
against the model's in-process answer, and fire `environment.events.request` with name = the
model and request_type = "REST" / "gRPC", timed with time.perf_counter(). Closed loop (the
default), each user sends when its last answer has arrived; open loop (LoadContext.open_loop),
requests start at their scheduled times and the latency runs from that time. Imported only by
loadtests/locustfile.py, after Locust has monkey-patched and gRPC has been made gevent-safe.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import grpc
from locust import FastHttpUser, User, constant, task

from loadtests.payloads import PayloadSet
from loadtests.schedule import Schedule

JSON_HEADERS = {"Content-Type": "application/json"}
CONTEXT_WAIT_S = 150.0


class WrongAnswer(Exception):
    """A response arrived but is not the model's answer for the image sent."""


class OpenLoop:
    """A process's open-loop schedule: due times, the cap on requests in flight, and what is still unanswered.

    Drivers (one per user, usually one per process) sleep until each request is due and hand it to a pool of at
    most `max_in_flight` greenlets; when the pool is full the driver waits, so that request (and those queued
    behind it) start late, and are counted late. Latency runs from the due time; service time from the send.
    """

    def __init__(self, schedule: Schedule, max_in_flight: int, late_tolerance_s: float):
        import gevent.pool
        from gevent.event import Event

        self.schedule = schedule
        self.max_in_flight = max_in_flight
        self.late_tolerance_s = late_tolerance_s
        self.pool = gevent.pool.Pool(max_in_flight)
        self.started = Event()
        self.t0 = 0.0
        self._due: Optional[Iterator[float]] = None
        self.slots_started = False
        self.lead = 0.001  # how early the slots wake: gevent's recent timer lateness
        self.unanswered: dict[int, float] = {}  # request number -> due time (perf_counter), due and not answered
        self._numbers = itertools.count()

    def resize(self, max_in_flight: int) -> None:
        """This process's cap (its share of the run's), before the schedule starts."""
        import gevent.pool
        self.pool = gevent.pool.Pool(max_in_flight)

    def start(self, share: int = 0, shares: int = 1, delay_s: float = 0.0) -> None:
        """Begin the schedule `delay_s` from now as share `share` of `shares` (a master tells each worker which)."""
        self.schedule = Schedule(self.schedule.rate, self.schedule.arrival, self.schedule.seed, share, shares)
        self.t0 = time.perf_counter() + delay_s
        self._due = self.schedule.offsets()
        self.started.set()

    def next_due(self) -> float:
        return self.t0 + next(self._due)

    def due(self, at: float) -> int:
        number = next(self._numbers)
        self.unanswered[number] = at
        return number

    def answered(self, number: int) -> None:
        self.unanswered.pop(number, None)

    def unanswered_before(self, t: float) -> list[float]:
        """Due times of the requests due before t that have no answer yet."""
        return [due for due in self.unanswered.values() if due < t]

    def stop(self) -> None:
        self.pool.kill(block=False)


@dataclass
class LoadContext:
    """What every user of a run shares: the model, where it is served, the rendered requests."""
    model: str
    payload: str
    rest_url: str
    grpc_target: str
    payloads: PayloadSet
    rest_bodies: list[bytes] = field(default_factory=list)
    rest_requests: list[bytes] = field(default_factory=list)  # whole HTTP requests for LeanHttp (plain http)
    grpc_requests: list = field(default_factory=list)
    open_loop: Optional[OpenLoop] = None
    outstanding: int = 0  # requests sent (closed loop) or due (open loop) and not yet answered
    outstanding_area: float = 0.0  # integral of `outstanding` over time (request-seconds), for Little's law
    _changed_at: float = field(default_factory=time.perf_counter)
    _users: itertools.count = field(default_factory=itertools.count)
    _images: itertools.count = field(default_factory=itertools.count)

    @property
    def rest_path(self) -> str:
        return f"/v1/models/{self.model}:predict"

    def first_image(self) -> int:
        """Each new user starts one image further, so concurrent users do not send the same image in step."""
        return next(self._users) % len(self.payloads)

    def in_flight(self, delta: int, since: Optional[float] = None) -> None:
        """A request became outstanding (+1; `since` its due time, if earlier) or was answered (-1).

        Keeps the time integral of the outstanding count exact.
        """
        now = time.perf_counter()
        self.outstanding_area += self.outstanding * (now - self._changed_at)
        if since is not None and since < now:
            self.outstanding_area += now - since
        self._changed_at = now
        self.outstanding += delta

    def area_now(self) -> float:
        """Request-seconds outstanding so far (the integral up to now)."""
        return self.outstanding_area + self.outstanding * (time.perf_counter() - self._changed_at)

    def next_image(self) -> int:
        """Open loop: the images in turn, whichever driver sends."""
        return next(self._images) % len(self.payloads)


def shared_context(environment) -> LoadContext:
    """The run's LoadContext, once ready (a Locust worker renders it when its master's payloads arrive)."""
    ready = getattr(environment, "loadtest_ready", None)
    if ready is not None and not ready.wait(timeout=CONTEXT_WAIT_S):
        raise RuntimeError(f"the run's payloads were not ready within {CONTEXT_WAIT_S:.0f}s (no answer from the master)")
    return environment.loadtest


def drive_open_loop(ctx: LoadContext, send: Callable[[int, float, int], None]) -> None:
    """Send ctx's requests at their due times, for ever (Locust kills this greenlet when the run stops).

    The process's in-flight cap is a set of long-lived slots (this greenlet and max_in_flight - 1 more in the
    run's pool): each takes the next due time, sleeps until it, sends and waits for the answer, then takes the
    next. A request due while every slot is busy starts when one frees, and counts as late. No greenlet is
    made per request, and requests due together go out in one turn of the event loop. gevent's timers fire
    about 1 ms late (epoll waits in whole milliseconds), so slots wake early by the recent lateness.
    `send(image, due, number)` sends one request.
    """
    loop = ctx.open_loop
    loop.started.wait()
    if not loop.slots_started:
        loop.slots_started = True
        for _ in range(loop.pool.size - 1):
            loop.pool.spawn(_slot, ctx, send)
    _slot(ctx, send)


WAKE_LEAD_MAX_S = 0.002


def _slot(ctx: LoadContext, send: Callable[[int, float, int], None]) -> None:
    import gevent

    loop = ctx.open_loop
    while True:
        due = loop.next_due()
        now = time.perf_counter()
        wait = due - now - loop.lead / 2  # half the mean lateness: gevent's is either ~0 or ~1 ms
        if wait > 0:
            gevent.sleep(wait)
            lag = time.perf_counter() - (now + wait)
            loop.lead = min(WAKE_LEAD_MAX_S, 0.95 * loop.lead + 0.05 * lag)
        ctx.in_flight(+1, since=due)
        send(ctx.next_image(), due, loop.due(due))


def answered(ctx: LoadContext, number: Optional[int]) -> None:
    """The answer is in: no longer outstanding (and, open loop, no longer awaited by the window's drain)."""
    ctx.in_flight(-1)
    if number is not None:
        ctx.open_loop.answered(number)


def next_request(user, send: Callable[..., None]) -> None:
    """One turn of a user's task: open loop, become a schedule slot (for good); closed loop, send the next image."""
    ctx = user.ctx
    if ctx.open_loop is not None:
        drive_open_loop(ctx, send)
        return
    i = user.index
    user.index = (i + 1) % len(ctx.payloads)
    ctx.in_flight(+1)
    send(i)


def report(user, request_type: str, i: int, due: Optional[float], start_time: float, started: float, ended: float,
           length: int, exception: Optional[BaseException]) -> None:
    """Fire Locust's request event for one answer, latency from the earlier of its due time and its send."""
    ctx = user.ctx
    loop = ctx.open_loop
    user.environment.events.request.fire(
        request_type=request_type, name=ctx.model, response_length=length, exception=exception,
        response_time=(ended - (started if due is None else min(due, started))) * 1000.0,
        start_time=start_time, url=user.url, response=None,
        context=timing_context(i, due, started, ended, loop.late_tolerance_s if loop else 0.0))


def timing_context(image: int, due: Optional[float], started: float, ended: float, late_s: float) -> dict:
    """The request event's context: what the recorder keeps beside the latency."""
    return {"image": image, "due": due, "service_ms": (ended - started) * 1000.0,
            "late": due is not None and started - due > late_s}


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
        self.idle: list = []

    def _connect(self):
        import socket
        sock = socket.create_connection(self.address, timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, raw: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; raises OSError (or ValueError for a malformed answer)."""
        sock = self.idle.pop() if self.idle else self._connect()
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

    def close(self) -> None:
        for sock in self.idle:
            sock.close()
        self.idle.clear()


def _read_response(sock) -> tuple[int, bytes, bool]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection before answering")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    keep = headers.get(b"connection", b"").lower() != b"close" and parts[0] != b"HTTP/1.0"
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(rest) < length:
            chunk = sock.recv(max(65536, length - len(rest)))
            if not chunk:
                raise ConnectionError("the server closed the connection in the middle of an answer")
            rest += chunk
        return status, rest[:length], keep
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += _recv(sock)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += _recv(sock)
            body, rest = body + rest[:size], rest[size + 2:]
            if size == 0:
                return status, body, keep
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


def render_rest_request(rest_url: str, path: str, body: bytes) -> Optional[bytes]:
    """The whole HTTP/1.1 request for LeanHttp, or None when the URL needs the general client (https)."""
    from urllib.parse import urlsplit

    url = urlsplit(rest_url)
    if url.scheme != "http" or not url.hostname:
        return None
    prefix = url.path.rstrip("/")
    return (f"POST {prefix}{path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class RestUser(FastHttpUser):
    """POST /v1/models/<model>:predict with the run's JSON bodies: back to back, or on the open-loop schedule."""
    wait_time = constant(0)
    host = "http://127.0.0.1:8501"  # replaced by --rest-url (or Locust's host field) when a test starts

    def on_start(self) -> None:
        from urllib.parse import urlsplit

        self.ctx: LoadContext = shared_context(self.environment)
        self.index = self.ctx.first_image()
        url = urlsplit(self.host or self.ctx.rest_url)
        self.lean = LeanHttp(url.hostname, url.port or 80) if self.ctx.rest_requests else None
        self.url = f"{(self.host or self.ctx.rest_url).rstrip('/')}{self.ctx.rest_path}"

    def on_stop(self) -> None:
        if self.lean is not None:
            self.lean.close()

    @task
    def predict(self) -> None:
        next_request(self, self._send if self.lean is not None else self._send_general)

    def _send(self, i: int, due: Optional[float] = None, number: Optional[int] = None) -> None:
        """The lean path: one pre-rendered request on a keep-alive connection, timed around the exchange."""
        ctx = self.ctx
        start_time = time.time()
        started = time.perf_counter()
        exception: Optional[BaseException] = None
        body = b""
        try:
            status, body = self.lean.request(ctx.rest_requests[i])
        except (OSError, ValueError) as exc:
            ended = time.perf_counter()
            answered(ctx, number)
            exception = WrongAnswer(f"HTTP 0: {type(exc).__name__}: {exc}")
        else:
            ended = time.perf_counter()
            answered(ctx, number)
            if status != 200:
                exception = WrongAnswer(f"HTTP {status}: {body[:300].decode(errors='replace')}")
            else:
                try:
                    problem = ctx.payloads.check(i, ctx.payloads.answer_rest(body))
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    problem = f"unreadable :predict answer ({exc})"
                if problem:
                    exception = WrongAnswer(problem)
        report(self, "REST", i, due, start_time, started, ended, len(body), exception)

    def _send_general(self, i: int, due: Optional[float] = None, number: Optional[int] = None) -> None:
        """Through Locust's FastHttpSession (https, or a Host typed into the web UI with a path)."""
        ctx = self.ctx
        loop = ctx.open_loop
        started = time.perf_counter()
        with self.client.post(ctx.rest_path, data=ctx.rest_bodies[i], headers=JSON_HEADERS, name=ctx.model,
                              catch_response=True) as response:
            ended = time.perf_counter()
            answered(ctx, number)
            meta = response.request_meta
            meta["request_type"] = "REST"
            meta["response_time"] = (ended - (started if due is None else min(due, started))) * 1000.0
            meta["context"] = timing_context(i, due, started, ended, loop.late_tolerance_s if loop else 0.0)
            if response.status_code != 200:
                detail = (response.text or "")[:300] if response.status_code else str(response.error)
                response.failure(f"HTTP {response.status_code}: {detail}")
                return
            try:
                problem = ctx.payloads.check(i, ctx.payloads.answer_rest(response.content))
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"unreadable :predict answer ({exc})"
            if problem:
                response.failure(problem)


class GrpcUser(User):
    """PredictionService.Predict with the run's PredictRequests, one channel per user; timed around the call."""
    wait_time = constant(0)

    def on_start(self) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.ctx: LoadContext = shared_context(self.environment)
        self.index = self.ctx.first_image()
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.insecure_channel(self.ctx.grpc_target, options=options)
        self.predict_call = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict
        self.url = f"grpc://{self.ctx.grpc_target}/tensorflow.serving.PredictionService/Predict"

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def predict(self) -> None:
        next_request(self, self._send)

    def _send(self, i: int, due: Optional[float] = None, number: Optional[int] = None) -> None:
        ctx = self.ctx
        start_time = time.time()
        started = time.perf_counter()
        exception: Optional[BaseException] = None
        length = 0
        try:
            response = self.predict_call(ctx.grpc_requests[i], timeout=60)
        except grpc.RpcError as exc:
            ended = time.perf_counter()
            answered(ctx, number)
            exception = WrongAnswer(f"{exc.code().name}: {exc.details()}")
        else:
            ended = time.perf_counter()
            answered(ctx, number)
            length = response.ByteSize()
            try:
                problem = ctx.payloads.check(i, ctx.payloads.answer_grpc(response))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                problem = f"unreadable PredictResponse ({exc})"
            if problem:
                exception = WrongAnswer(problem)
        report(self, "gRPC", i, due, start_time, started, ended, length, exception)
