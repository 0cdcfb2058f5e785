"""Locust's distributed mode for the bench: one master, N workers, the same measurements as one process.

Imported only by loadtests/locustfile.py (after Locust's monkey-patching). Messages, all small except one:

  worker -> master  need_payloads   sent at worker start-up
  master -> worker  payloads        the PayloadSet's .npz bytes, so a worker on another machine needs neither
                                    the exported model nor the spec's images, only this repository and its venv
  worker -> master  ready           its requests are rendered: its users can send (the warm-up starts only
                                    once every worker is ready, so a slow worker never shortens the window)
  master -> worker  schedule        open loop: this worker's share of the arrival schedule (k of n), to start
                                    at once; sent when every worker is ready, so the shares start together
  master -> worker  begin_window    the warm-up is over: forget what was recorded, measure from now
  master -> worker  boundary        a sub-window ends: mark it (time, CPU, requests in flight) and answer with
  worker -> master  progress        the samples recorded since the last boundary (open loop: once the requests
                                    due before it have answered, or a grace time is up), so the master can
                                    judge whether the run has settled (loadtests/analyze/settling.py)
  master -> worker  end_window      the window is over, its figures come from the span of sub-windows given:
                                    stop recording (open loop: once the requests due in the window have
                                    answered, or the drain time is up) and answer with
  worker -> master  samples         every request since the window began (Recorder.snapshot, times from the
                                    span's start), merged by the master

The master decides the window (as a single process does) and writes the one samples file `run.py` reads.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import gevent
from gevent.event import Event

from loadtests.drive.payloads import PayloadSet

log = logging.getLogger("loadtests.drive.distributed")
SAMPLES_WAIT_S = 30.0  # how long the master waits for the workers' samples after end_window
PAYLOADS_WAIT_S = 120.0  # how long a worker's users wait for the master's payloads


class MasterSide:
    """The master's part: hands out payloads, opens and closes every worker's window, merges their samples."""

    def __init__(self, environment, payload_blob: Callable[[], bytes]):
        self.runner = environment.runner
        self._payload_blob = payload_blob
        self._blob: Optional[bytes] = None
        self.parts: dict[str, dict] = {}
        self._expected: set[str] = set()
        self._all_in = Event()
        self.ready: set[str] = set()
        self._ready_changed = Event()
        self.runner.register_message("need_payloads", self._on_need_payloads)
        self.runner.register_message("samples", self._on_samples)
        self.runner.register_message("ready", self._on_ready)
        self.runner.register_message("progress", self._on_progress)
        self.progress: dict[int, dict[str, dict]] = {}
        self._progress_changed = Event()

    def _on_ready(self, environment, msg, **_kwargs) -> None:
        self.ready.add(msg.node_id)
        self._ready_changed.set()

    def wait_ready(self, timeout_s: float = PAYLOADS_WAIT_S) -> bool:
        """Block (this greenlet) until every connected worker has rendered its requests; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = {worker.id for worker in self.runner.clients.all} - self.ready
            if not waiting:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d worker(s) not ready after %.0fs: %s", len(waiting), timeout_s, ", ".join(sorted(waiting)))
                return False
            self._ready_changed.clear()
            self._ready_changed.wait(timeout=min(left, 1.0))

    def _on_need_payloads(self, environment, msg, **_kwargs) -> None:
        if self._blob is None:
            self._blob = self._payload_blob()
        self.runner.send_message("payloads", {"npz": self._blob}, client_id=msg.node_id)

    def _on_samples(self, environment, msg, **_kwargs) -> None:
        self.parts[msg.node_id] = msg.data
        if self._expected and self._expected <= set(self.parts):
            self._all_in.set()

    def start_schedule(self) -> int:
        """Open loop: give every connected worker its share of the schedule; returns the number of shares."""
        workers = sorted(worker.id for worker in self.runner.clients.all)
        for share, worker in enumerate(workers):
            self.runner.send_message("schedule", {"share": share, "shares": len(workers)}, client_id=worker)
        return len(workers)

    def begin_window(self) -> None:
        self.progress.clear()
        self.runner.send_message("begin_window")

    def _on_progress(self, environment, msg, **_kwargs) -> None:
        self.progress.setdefault(int(msg.data["number"]), {})[msg.node_id] = msg.data
        self._progress_changed.set()

    def boundary(self, number: int, grace_s: float) -> list[dict]:
        """Sub-window `number` has ended: every worker marks it; returns what they recorded since the last one
        (those that answer within the grace time and SAMPLES_WAIT_S; a late answer joins the next boundary's)."""
        self.runner.send_message("boundary", {"number": number, "grace_s": grace_s})
        expected = {worker.id for worker in self.runner.clients.all}
        deadline = time.monotonic() + grace_s + SAMPLES_WAIT_S
        while not expected <= set(self.progress.get(number, {})) and time.monotonic() < deadline:
            self._progress_changed.clear()
            self._progress_changed.wait(timeout=0.5)
        missing = expected - set(self.progress.get(number, {}))
        if missing:
            log.warning("sub-window %d: no samples in time from %s (they join a later boundary's)", number,
                        ", ".join(sorted(missing)))
        return [part for n in sorted(self.progress) if n <= number for part in self.progress.pop(n).values()]

    def end_window(self, span: Optional[tuple[int, int]] = None, settled: Optional[dict] = None,
                   wait_s: float = SAMPLES_WAIT_S) -> list[dict]:
        """Close every worker's window on `span` and collect their samples (those that answer within wait_s)."""
        self.parts.clear()
        self._all_in.clear()
        self._expected = {worker.id for worker in self.runner.clients.all}
        self.runner.send_message("end_window", {"span": list(span) if span else None, "settled": settled or {}})
        if self._expected and not self._all_in.wait(timeout=wait_s):
            missing = sorted(self._expected - set(self.parts))
            log.warning("no samples from %d of %d workers within %.0fs: %s", len(missing), len(self._expected),
                        wait_s, ", ".join(missing))
        return list(self.parts.values())


class WorkerSide:
    """A worker's part: asks for the payloads, and records its own users' requests inside the master's window.

    begin / end open and close this process's window (end may wait for answers: it runs in its own greenlet);
    start_schedule(share, shares) starts its share of an open-loop schedule.
    """

    def __init__(self, environment, recorder, begin: Callable[[], None], end: Callable[[Optional[tuple], dict], None],
                 start_schedule: Callable[[int, int], None], boundary: Callable[[float], dict]):
        self.runner = environment.runner
        self.recorder = recorder
        self.payloads: Optional[PayloadSet] = None
        self.arrived = Event()
        self._end = end
        self._boundary = boundary
        self.runner.register_message("boundary", self._on_boundary)
        self.runner.register_message("payloads", self._on_payloads)
        self.runner.register_message("begin_window", lambda **_kw: begin())
        self.runner.register_message("end_window", self._on_end_window)
        self.runner.register_message(
            "schedule", lambda environment, msg, **_kw: start_schedule(msg.data["share"], msg.data["shares"]))
        self.runner.send_message("need_payloads")

    def _on_payloads(self, environment, msg, **_kwargs) -> None:
        self.payloads = PayloadSet.from_bytes(msg.data["npz"])
        self.arrived.set()

    def announce_ready(self) -> None:
        """Tell the master this worker's requests are rendered (its users can send from now on)."""
        self.runner.send_message("ready")

    def _on_boundary(self, environment, msg, **_kwargs) -> None:
        def mark_and_send() -> None:
            part = self._boundary(float(msg.data["grace_s"]))
            self.runner.send_message("progress", {"number": msg.data["number"], **part})
        gevent.spawn(mark_and_send)  # it may wait for answers: never block the message loop

    def _on_end_window(self, environment, msg, **_kwargs) -> None:
        data = msg.data or {}
        span = tuple(data["span"]) if data.get("span") else None

        def close_and_send() -> None:
            self._end(span, data.get("settled") or {})
            self.runner.send_message("samples", self.recorder.snapshot())
        gevent.spawn(close_and_send)  # never block the worker's message loop (heartbeats) while draining

    def when_payloads(self, then: Callable[[PayloadSet], None]) -> None:
        """Call `then(payloads)` once they have arrived, without blocking the worker's message loop."""
        def wait_then() -> None:
            if not self.arrived.wait(timeout=PAYLOADS_WAIT_S):
                log.error("no payloads from the master within %.0fs", PAYLOADS_WAIT_S)
                return
            then(self.payloads)
        if self.arrived.is_set():
            then(self.payloads)
        else:
            gevent.spawn(wait_then)
