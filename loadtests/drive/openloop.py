"""The open-loop schedule of one load-generating process: due times, the cap on requests in flight, and the
driver that starts each request at its due time. gevent only: no Locust, no TensorFlow (loadtests/drive/users.py runs it
inside a Locust user; the unit tests drive it directly).

`ctx` is the run's LoadContext (loadtests/drive/users.py): its `open_loop`, `in_flight(delta, since)` and `next_image()`.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Iterator, Optional

import gevent
import gevent.event
import gevent.pool

from loadtests.drive.schedule import Schedule


class OpenLoop:
    """A process's open-loop schedule: due times, the cap on requests in flight, and what is still unanswered.

    One driver per process sleeps until the next request is due and starts every request due by then (see
    drive_open_loop). When `max_in_flight` requests are unanswered the driver waits for an answer, so that request
    (and those queued behind it) start late, and are counted late. Latency runs from the due time; service time
    from the send.
    """

    def __init__(self, schedule: Schedule, max_in_flight: int, late_tolerance_s: float):
        self.schedule = schedule
        self.max_in_flight = max_in_flight
        self.cap = max_in_flight  # this process's share of the cap
        self.late_tolerance_s = late_tolerance_s
        self.started = gevent.event.Event()
        self.stopping = gevent.event.Event()  # set as the run stops: the driver returns, so no stop timeout is waited
        self.room = gevent.event.Event()  # set when fewer than `cap` requests are unanswered
        self.room.set()
        self.t0 = 0.0
        self._due: Optional[Iterator[float]] = None
        self.driving = False
        self.pool = None  # greenlets of the senders that block (set by drive_open_loop when one is used)
        self.lead = 0.001  # how early the driver wakes: gevent's recent timer lateness
        self.unanswered: dict[int, float] = {}  # request number -> due time (perf_counter), due and not answered
        self._numbers = itertools.count()

    def resize(self, max_in_flight: int) -> None:
        """This process's cap (its share of the run's), before the schedule starts."""
        self.cap = max_in_flight

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
        if len(self.unanswered) >= self.cap:
            self.room.clear()
        return number

    def answered(self, number: int) -> None:
        self.unanswered.pop(number, None)
        if len(self.unanswered) < self.cap:
            self.room.set()

    def unanswered_before(self, t: float) -> list[float]:
        """Due times of the requests due before t that have no answer yet."""
        return [due for due in self.unanswered.values() if due < t]

    def stop(self) -> None:
        """The run is stopping: the driver returns at once (Locust would otherwise wait its --stop-timeout for a
        task that never ends), and senders still waiting on an answer are killed (the window has drained)."""
        self.stopping.set()
        self.room.set()  # a driver waiting for room under the cap wakes, and returns
        if self.pool is not None:
            self.pool.kill(block=False)


def drive_open_loop(ctx, start: Callable[[int, float, int], None]) -> None:
    """Start ctx's requests at their due times until the run stops (`OpenLoop.stop`, on Locust's test_stopping).

    One driver per process: it sleeps until the next due time, then starts every request due by the time it is
    awake, in one turn of the event loop, and sleeps again. `start(image, due, number)` must not wait for the
    answer: the lean REST path writes the request and returns (each connection's reader greenlet takes the answer),
    other senders are run in greenlets (`spawning`). So the schedule costs one timer per wake-up, not one per
    request. gevent's timers fire about 1 ms late (epoll waits in whole milliseconds): the driver wakes early by
    half the recent lateness. Further users of the same process (the web UI can start several) wait idle.
    """
    loop = ctx.open_loop
    loop.started.wait()
    if loop.driving:
        loop.stopping.wait()  # one driver per process; this user idles until the run stops
        return
    loop.driving = True
    due = loop.next_due()
    while not loop.stopping.is_set():
        now = time.perf_counter()
        wait = due - now - loop.lead / 2
        if wait > 0:
            if wait > LONG_WAIT_S:  # a slow schedule: wait where the run's stop can end the wait
                if loop.stopping.wait(wait):
                    return
            else:
                gevent.sleep(wait)
            now = time.perf_counter()
            loop.lead = min(WAKE_LEAD_MAX_S, 0.95 * loop.lead + 0.05 * (now - (due - loop.lead / 2)))
        horizon = now + loop.lead / 2
        while due <= horizon:
            if not loop.room.is_set():
                loop.room.wait()  # the cap: this request (and those behind it) start late
                if loop.stopping.is_set():
                    return
            ctx.in_flight(+1, since=due)
            start(ctx.next_image(), due, loop.due(due))
            due = loop.next_due()


def spawning(ctx, send: Callable[[int, float, int], None]) -> Callable[[int, float, int], None]:
    """A start function for a sender that waits for its answer: each request runs in a greenlet of its own."""
    loop = ctx.open_loop
    if loop.pool is None:
        loop.pool = gevent.pool.Group()
    return lambda image, due, number: loop.pool.spawn(send, image, due, number)


WAKE_LEAD_MAX_S = 0.002
LONG_WAIT_S = 0.1  # the driver sleeps on the stop event rather than a bare timer when the next request is this far
