"""Queueing theory the tests compare measurements with."""
from __future__ import annotations

import numpy as np


def md1_percentile_ms(rate: float, service_ms: float, percentile: float, arrivals: int = 60000) -> float:
    """A percentile of the response time (wait + service) of an M/D/1 queue: Poisson arrivals at `rate` per
    second, one server, a fixed service time. By the Lindley recursion over a long seeded arrival stream (its
    first 5% dropped as warm-up); rate must be below the service rate."""
    if rate * service_ms / 1000.0 >= 1.0:
        return float("inf")
    rng = np.random.default_rng(0)
    gaps = rng.exponential(1000.0 / rate, arrivals)
    wait = np.empty(arrivals)
    current = 0.0
    for i, gap in enumerate(gaps):  # W[n+1] = max(0, W[n] + S - A[n+1])
        current = max(0.0, current + service_ms - gap) if i else 0.0
        wait[i] = current
    return float(np.percentile(wait[arrivals // 20:] + service_ms, percentile))
