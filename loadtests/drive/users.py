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
from typing import Callable, Optional

import grpc
from locust import FastHttpUser, User, constant, task

from loadtests.drive import wire
from loadtests.drive.http2 import GrpcError
from loadtests.drive.leangrpc import LeanGrpc
from loadtests.drive.leanhttp import LeanHttp
from loadtests.drive.openloop import OpenLoop, drive_open_loop, spawning
from loadtests.drive.payloads import PayloadSet, Verdicts

JSON_HEADERS = {"Content-Type": "application/json"}
CONTEXT_WAIT_S = 150.0


class WrongAnswer(Exception):
    """A response arrived but is not the model's answer for the image sent."""


@dataclass
class LoadContext:
    """What every user of a run shares: the model, where it is served, the rendered requests."""
    model: str
    payload: str
    rest_url: str
    grpc_target: str
    payloads: PayloadSet
    verdicts: Verdicts = field(init=False)  # the answer checks, remembered per distinct answer
    rest_bodies: list[bytes] = field(default_factory=list)
    rest_requests: list[bytes] = field(default_factory=list)  # whole HTTP requests for LeanHttp (plain http)
    grpc_requests: list[bytes] = field(default_factory=list)  # serialized PredictRequests, for grpcio
    grpc_messages: list[bytes] = field(default_factory=list)  # the same, framed for the lean client (--grpc-client lean)
    open_loop: Optional[OpenLoop] = None
    outstanding: int = 0  # requests sent (closed loop) or due (open loop) and not yet answered
    outstanding_area: float = 0.0  # integral of `outstanding` over time (request-seconds), for Little's law
    _changed_at: float = field(default_factory=time.perf_counter)
    _users: itertools.count = field(default_factory=itertools.count)
    _images: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.verdicts = Verdicts(self.payloads)

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


def answered(ctx: LoadContext, number: Optional[int]) -> None:
    """The answer is in: no longer outstanding (and, open loop, no longer awaited by the window's drain)."""
    ctx.in_flight(-1)
    if number is not None:
        ctx.open_loop.answered(number)


def next_request(user, send: Callable[..., None], start: Optional[Callable[[int, float, int], None]] = None) -> None:
    """One turn of a user's task: open loop, become the process's driver (for good); closed loop, send the next image.

    `start`: the open-loop way to begin a request without waiting for it (default: `send` in a greenlet).
    """
    ctx = user.ctx
    if ctx.open_loop is not None:
        drive_open_loop(ctx, start or spawning(ctx, send))
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


def render_rest_request(rest_url: str, path: str, body: bytes) -> Optional[bytes]:
    """The whole HTTP/1.1 request for LeanHttp, or None when the URL needs the general client (https)."""
    from urllib.parse import urlsplit

    url = urlsplit(rest_url)
    if url.scheme != "http" or not url.hostname:
        return None
    prefix = url.path.rstrip("/")
    return (f"POST {prefix}{path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _LeanPaths:
    """What RestUser and GrpcUser share: the lean client's closed- and open-loop paths and the answer's handling.

    A user sets `self.lean` (None: its general client) and gives `_send_lean` (closed loop, timed around the
    exchange), `_wire(i)` (request i's pre-rendered bytes) and `_problem(...)` (why an answer is wrong, or None).
    """
    request_type = ""

    def _predict(self, general: Callable[..., None]) -> None:
        if self.lean is not None:
            next_request(self, self._send_lean, self._start_lean)
        else:
            next_request(self, general)

    def _start_lean(self, i: int, due: float, number: int) -> None:
        """Open loop: write the request; the connection's reader calls _answer with the job."""
        self.lean.start(self._wire(i), (i, due, number, time.time(), time.perf_counter()), self._answer)

    def _answer(self, job: tuple, status, body: bytes, error: Optional[BaseException]) -> None:
        ended = time.perf_counter()
        i, due, number, start_time, started = job
        answered(self.ctx, number)
        problem = self._problem(i, status, body, error)
        report(self, self.request_type, i, due, start_time, started, ended, len(body),
               WrongAnswer(problem) if problem else None)


class RestUser(_LeanPaths, FastHttpUser):
    """POST /v1/models/<model>:predict with the run's JSON bodies: back to back, or on the open-loop schedule."""
    wait_time = constant(0)
    request_type = "REST"
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
        self._predict(self._send_general)

    def _send_lean(self, i: int, due: Optional[float] = None, number: Optional[int] = None) -> None:
        """Closed loop: one pre-rendered request on a keep-alive connection, timed around it."""
        start_time = time.time()
        started = time.perf_counter()
        try:
            status, body = self.lean.request(self.ctx.rest_requests[i])
        except (OSError, ValueError) as exc:
            self._answer((i, due, number, start_time, started), 0, b"", exc)
        else:
            self._answer((i, due, number, start_time, started), status, body, None)

    def _wire(self, i: int) -> bytes:
        return self.ctx.rest_requests[i]

    def _problem(self, i: int, status: int, body: bytes, error: Optional[BaseException]) -> Optional[str]:
        if error is not None:
            return f"HTTP 0: {type(error).__name__}: {error}"
        if status != 200:
            return f"HTTP {status}: {body[:300].decode(errors='replace')}"
        return self.ctx.verdicts.rest(i, body)

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
            problem = ctx.verdicts.rest(i, response.content)
            if problem:
                response.failure(problem)


class GrpcUser(_LeanPaths, User):
    """PredictionService.Predict with the run's PredictRequests, one connection per user; timed around the call.

    By default through loadtests/drive/leangrpc.py (pre-rendered HTTP/2 frames: what the server sees is the same call);
    with --grpc-client grpcio, through the official tensorflow-serving-api stub on a grpcio channel.
    """
    wait_time = constant(0)
    request_type = "gRPC"

    def on_start(self) -> None:
        self.ctx: LoadContext = shared_context(self.environment)
        self.index = self.ctx.first_image()
        self.url = f"grpc://{self.ctx.grpc_target}{wire.PREDICT_METHOD}"
        self.lean = LeanGrpc(self.ctx.grpc_target, wire.PREDICT_METHOD) if self.ctx.grpc_messages else None
        self.channel = None
        if self.lean is None:
            options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                       ("grpc.max_send_message_length", 64 * 1024 * 1024)]
            self.channel = grpc.insecure_channel(self.ctx.grpc_target, options=options)
            self.predict_call = wire.predict_method(self.channel, raw=True)  # bytes in, bytes out

    def on_stop(self) -> None:
        if self.lean is not None:
            self.lean.close()
        if self.channel is not None:
            self.channel.close()

    @task
    def predict(self) -> None:
        self._predict(self._send)

    def _send_lean(self, i: int, due: Optional[float] = None, number: Optional[int] = None) -> None:
        """Closed loop: one call on this user's connection, timed around it."""
        start_time = time.time()
        started = time.perf_counter()
        body, error = self.lean.call(self.ctx.grpc_messages[i])
        self._answer((i, due, number, start_time, started), None, body, error)

    def _wire(self, i: int) -> bytes:
        return self.ctx.grpc_messages[i]

    def _problem(self, i: int, status: Optional[str], body: bytes, error: Optional[GrpcError]) -> Optional[str]:
        return f"{error.code}: {error.details}" if error is not None else self.ctx.verdicts.grpc(i, body)

    def _send(self, i: int, due: Optional[float] = None, number: Optional[int] = None) -> None:
        """Through grpcio (--grpc-client grpcio)."""
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
            length = len(response)
            problem = ctx.verdicts.grpc(i, response)
            if problem:
                exception = WrongAnswer(problem)
        report(self, "gRPC", i, due, start_time, started, ended, length, exception)
