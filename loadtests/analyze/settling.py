"""Runs that settle: measure at least the duration, then one sub-window at a time until the last three agree.

Runs in the process that times the window (a plain headless Locust process, or the master of a distributed run),
after the warm-up: at every sub-window boundary it marks the time (CPU, server metrics, requests in flight), gathers
the samples recorded since the last boundary (from its own users, or from every worker), and once `duration` has
passed asks validity.settle whether the last SUB_WINDOWS sub-windows agree. It stops when they do, or at
`max_duration`; the run's figures then come from the settled span (validity.Settled), which reaches back over every
earlier sub-window that agrees with it. Free of Locust imports; gevent only to sleep.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import gevent
import numpy as np

from loadtests.analyze import validity
from loadtests.analyze.validity import SUB_WINDOWS


@dataclass(frozen=True)
class Window:
    """How long a run measures: at least `duration_s`, at most `max_duration_s`, in sub-windows of duration_s / 3."""
    duration_s: float
    max_duration_s: float

    @property
    def width_s(self) -> float:
        return self.duration_s / SUB_WINDOWS

    @property
    def max_windows(self) -> int:
        return max(SUB_WINDOWS, int(math.floor(self.max_duration_s / self.width_s + 1e-6)))


class Gathered:
    """The samples gathered so far, as numpy arrays; times from the first mark."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {"t": [], "latency_ms": [], "ok": [], "due": []}
        self._arrays: Optional[dict[str, np.ndarray]] = None

    def add(self, part: dict) -> None:
        for key, dtype in (("t", np.float64), ("latency_ms", np.float64), ("ok", bool), ("due", np.float64)):
            self._parts[key].append(np.asarray(part[key], dtype=dtype))
        self._arrays = None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {key: (np.concatenate(chunks) if chunks else np.array([]))
                            for key, chunks in self._parts.items()}
            self._parts = {key: [array] for key, array in self._arrays.items()}
        return self._arrays

    def settle(self, marks, count: int, rules: validity.Rules, open_loop: bool) -> validity.Settled:
        """validity.settle over the first `count` sub-windows (between `marks`, seconds from the first) of what was
        gathered."""
        a = self.arrays()
        key = a["due"] if open_loop else a["t"]
        return validity.settle(a["t"], key, a["ok"], a["latency_ms"], marks, count, rules,
                               due=a["due"] if open_loop else None)


    def all_over(self, marks, count: int, fail_over: tuple[float, float], open_loop: bool) -> bool:
        """Whether the `fail_over` percentile of every one of the last SUB_WINDOWS sub-windows is above its
        latency (a sub-window with no answer counts as above: none came back inside it)."""
        a = self.arrays()
        percentile, latency_ms = fail_over
        edges = list(marks[count - SUB_WINDOWS:count + 1])
        parts = validity.parts_between(a["t"], a["due"] if open_loop else a["t"], a["ok"], a["latency_ms"], edges,
                                       percentile)
        values = [part[validity.pkey(percentile)] for part in parts]
        return all(not math.isfinite(v) or v > latency_ms for v in values)


def measure_until_settled(window: Window, rules: validity.Rules, open_loop: bool, started_at: float,
                          boundary: Callable[[int], tuple[float, Iterable[dict]]],
                          fail_over: Optional[tuple[float, float]] = None) -> tuple[validity.Settled, bool]:
    """Wait for each sub-window boundary after `started_at` (a perf_counter time), call `boundary(i)` there (it
    marks the boundary and returns the instant it marked, a perf_counter time, and the samples recorded since the
    last one), and return the settled span once the run has measured `duration_s` and its last sub-windows agree,
    or has reached `max_duration_s`. Sub-windows are cut at the marked instants, not the planned ones: a boundary
    marked late (a busy machine) moves the edge the final judgment uses too, so both judge the same parts.

    `fail_over` (percentile, latency in ms: a capacity probe's SLO) ends an unsettled run early once that
    percentile of each of the last sub-windows is above the latency: the run's percentile lies between its
    sub-windows' (they hold all its samples), so it fails the SLO however long it goes on. The second value
    returned says whether that happened."""
    gathered = Gathered()
    marks = [0.0]
    count = 0
    while True:
        count += 1
        gevent.sleep(max(0.0, started_at + count * window.width_s - time.perf_counter()))
        marked_at, parts = boundary(count)
        marks.append(max(marks[-1], marked_at - started_at))
        for part in parts:
            gathered.add(part)
        if count < SUB_WINDOWS:
            continue
        gevent.sleep(0)  # let the users run between gathering and judging
        settled = gathered.settle(marks, count, rules, open_loop)
        if settled.stable or count >= window.max_windows:
            return settled, False
        if fail_over and marks[count] >= window.duration_s - 1e-6 \
                and gathered.all_over(marks, count, fail_over, open_loop):
            return settled, True


def facts(window: Window, settled: validity.Settled, over_slo: bool = False) -> dict:
    """What the samples file records about how the window settled (over_slo: stopped early, every sub-window over
    the SLO)."""
    return {"duration_s": window.duration_s, "max_duration_s": window.max_duration_s,
            "sub_window_s": window.width_s, "windows_total": settled.count, "windows_used": settled.used,
            "first_window": settled.first, "stable": settled.stable, "windows_grouped": settled.group,
            "before_s": settled.marks[settled.first], "edges_s": settled.edges_s, "over_slo": over_slo}
