"""Open-loop arrival schedules: when each request of an open-loop run is due, independent of the answers.

A run's rate is split over its load-generating processes ("shares"): share k of n sends at rate/n. Poisson
shares draw independent exponential gaps (their union is a Poisson process at the full rate); constant shares
are offset by k/rate, so together they tick evenly at the full rate. Seeds come from benchmark.images.seed, so
a run's schedule is reproducible. Free of Locust and gevent imports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

ARRIVALS = ("poisson", "constant")
CHUNK = 4096  # gaps drawn at a time (drawing one by one costs more than the loop that sends)


@dataclass(frozen=True)
class Schedule:
    """Due times, in seconds from the schedule's start, for share `share` of `shares` of an arrival process."""
    rate: float             # requests per second over all shares
    arrival: str = "poisson"
    seed: int = 0
    share: int = 0
    shares: int = 1

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"an open-loop rate must be a positive number of requests per second (got {self.rate})")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)} (got {self.arrival!r})")
        if not 0 <= self.share < self.shares:
            raise ValueError(f"share {self.share} is not one of 0..{self.shares - 1}")

    @property
    def share_rate(self) -> float:
        return self.rate / self.shares

    def offsets(self) -> Iterator[float]:
        """Due times from 0, increasing, for ever."""
        gap = 1.0 / self.share_rate
        if self.arrival == "constant":
            first = self.share / self.rate
            k = 0
            while True:
                yield first + k * gap
                k += 1
        rng = np.random.default_rng([self.seed, self.share, self.shares])
        t = 0.0
        while True:
            for step in np.cumsum(rng.exponential(gap, CHUNK)).tolist():
                yield t + step
            t += step

    def first(self, n: int) -> np.ndarray:
        """The first n due times (for tests and reports)."""
        it = self.offsets()
        return np.fromiter((next(it) for _ in range(n)), np.float64, n)
