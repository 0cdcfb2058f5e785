"""Open-loop gRPC load on one or more models of one server, every request recorded: which model, when it was due,
sent and answered, whether its answer was the in-process one, and which version answered it (the response's
model spec). What make lifecycle's version swap and density parts measure with; a bench's runs use Locust.

Requests are due at a constant rate per model, interleaved across the models; a scheduler thread sends each
at its due time (late when it could not, by more than `late_tolerance_s`) as a grpcio future, so a slow answer
never delays the next request.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from loadtests.drive import wire
from spec.errors import UsageError

MAX_RATE = 2000.0  # req/s over all models: beyond it one Python scheduler thread falls behind its schedule
LATE_RATIO_LIMIT = 0.05


@dataclass(frozen=True)
class Target:
    """One model under load: its requests (cycled) and its payloads (to check each answer against)."""
    model: str
    requests: tuple
    payloads: object  # loadtests.drive.payloads.PayloadSet


@dataclass
class Answer:
    model: str
    due: float      # seconds from the load's start
    sent: float
    done: float
    ok: bool
    version: Optional[int]
    late: bool = False
    error: str = ""


def check_rate(rate_per_model: float, models: int, what: str = "--rate") -> None:
    """UsageError (one line) for a rate this generator cannot offer."""
    if not math.isfinite(rate_per_model) or rate_per_model <= 0:
        raise UsageError(f"{what} {rate_per_model:g}: a rate is a positive number of requests per second")
    if rate_per_model * models > MAX_RATE:
        raise UsageError(f"{what} {rate_per_model:g} req/s x {models} model(s) is {rate_per_model * models:g} req/s: "
                         f"more than this generator can offer on time (one scheduler thread, at most {MAX_RATE:g} "
                         "req/s); lower it")


class OpenLoad:
    """Constant-rate gRPC Predicts to every target; `start`, then `stop` returns every answer."""

    def __init__(self, grpc_target: str, targets: Sequence[Target], rate_per_model: float,
                 late_tolerance_s: float = 0.005, timeout_s: float = 10.0):
        import grpc

        check_rate(rate_per_model, len(targets))
        self.targets, self.rate, self.tolerance, self.timeout_s = list(targets), rate_per_model, late_tolerance_s, \
            timeout_s
        self.channel = grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.predict = wire.predict_method(self.channel)
        self.answers: list[Answer] = []
        self.late = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._outstanding = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._schedule, daemon=True)
        self.started_at = 0.0

    def now(self) -> float:
        """Seconds since the load started."""
        return time.perf_counter() - self.started_at

    def start(self) -> "OpenLoad":
        """Connect and send each target one request first (not recorded: a first call's connection and the
        client's own first-call costs are not the server's latency), then start the schedule."""
        import grpc

        grpc.channel_ready_future(self.channel).result(timeout=self.timeout_s)
        for target in self.targets:
            try:
                self.predict(target.requests[0], timeout=self.timeout_s)
            except grpc.RpcError:
                pass  # a model that cannot answer yet fails in the schedule, where it is counted
        self.started_at = time.perf_counter()
        self._thread.start()
        return self

    def _schedule(self) -> None:
        interval = 1.0 / (self.rate * len(self.targets))
        i = 0
        while not self._stop.is_set():
            due = i * interval
            wait = due - self.now()
            if wait > 0:
                if self._stop.wait(wait):
                    break
            target = self.targets[i % len(self.targets)]
            index = (i // len(self.targets)) % len(target.requests)
            sent = self.now()
            if sent - due > self.tolerance:
                self.late += 1
            future = self.predict.future(target.requests[index], timeout=self.timeout_s)
            self.sent += 1
            future.add_done_callback(lambda f, t=target, n=index, d=due, s=sent: self._done(f, t, n, d, s,
                                                                                       s - d > self.tolerance))
            i += 1

    def _done(self, future, target: Target, index: int, due: float, sent: float, late: bool) -> None:
        done = self.now()
        version, ok, error = None, False, ""
        try:
            response = future.result()
            version = int(response.model_spec.version.value) if response.model_spec.HasField("version") else None
            _diff, problem = target.payloads.compare(index, target.payloads.answer_grpc(response))
            ok, error = problem is None, problem or ""
        except Exception as exc:  # noqa: BLE001 - an RPC error or an unreadable answer is a failed request
            code = getattr(exc, "code", None)
            error = f"{code().name}: {exc.details()}" if callable(code) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.answers.append(Answer(target.model, due, sent, done, ok, version, late, error[:200]))
        self._outstanding.release()

    def stop(self) -> list[Answer]:
        """Stop sending; wait (at most the request timeout) for the requests in flight; every answer, by due time."""
        self._stop.set()
        self._thread.join()
        deadline = time.perf_counter() + self.timeout_s + 1.0
        for _ in range(self.sent):
            if not self._outstanding.acquire(timeout=max(0.0, deadline - time.perf_counter())):
                break
        self.channel.close()
        with self._lock:
            return sorted(self.answers, key=lambda a: a.due)


def buckets(answers: Sequence[Answer], model: str, width_s: float, end_s: float) -> list[dict]:
    """Per `width_s` of due time: requests, p50 and p99 of the good answers (ms, from the due time, so a late
    start counts), failures, late starts, and how many each version answered."""
    mine = [a for a in answers if a.model == model]
    out = []
    for k in range(int(math.ceil(end_s / width_s))):
        low, high = k * width_s, (k + 1) * width_s
        inside = [a for a in mine if low <= a.due < high]
        good = np.array([(a.done - a.due) * 1000.0 for a in inside if a.ok])
        versions: dict[str, int] = {}
        for a in inside:
            if a.ok and a.version is not None:
                versions[str(a.version)] = versions.get(str(a.version), 0) + 1
        out.append({"t": round(low, 6), "requests": len(inside), "failures": sum(not a.ok for a in inside),
                    "late": sum(a.late for a in inside),
                    "p50_ms": float(np.percentile(good, 50)) if good.size else None,
                    "p99_ms": float(np.percentile(good, 99)) if good.size else None, "versions": versions})
    return out


def latency_ms(answers: Sequence[Answer], model: Optional[str], q: float, low: float = 0.0,
               high: float = math.inf) -> Optional[float]:
    """The q-th percentile (ms, from the due time) of the good answers due in [low, high), of `model` (None: of
    every model)."""
    values = [(a.done - a.due) * 1000.0 for a in answers
              if (model is None or a.model == model) and a.ok and low <= a.due < high]
    return float(np.percentile(values, q)) if values else None
