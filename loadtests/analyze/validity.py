"""Whether a run's numbers can be trusted, and why not: the rules every bench and capacity run is judged by.

A run is invalid when it measured too briefly or too few requests, when throughput or the judged percentile
moved by more than benchmark.stability_percent across the last three sub-windows (and by more than sampling
noise explains: a percentile outside the band its sample count allows; open loop, throughput is judged as the
share of the requests due in each sub-window that completed in it), when the judged percentile
rests on too few samples above it, when more than benchmark.max_late_ratio of an open-loop run's requests
started late (the generator could not keep the schedule), when the load generator was CPU-bound, when Little's
law (requests in flight = throughput x time in the system) does not hold between the users' own count of
outstanding requests and the recorded latencies, or when the server stopped. Pure functions over the samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

GENERATOR_BOUND_PERCENT = 80.0
SUB_WINDOWS = 3
LITTLE_TOLERANCE = 0.10
STANDARD_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True)
class Rules:
    min_duration_s: float = 5.0
    min_requests: int = 100
    stability_percent: float = 10.0
    min_tail_samples: int = 10
    max_late_ratio: float = 0.01
    judged_percentile: float = 50.0
    bound_percentile: float = 99.0  # the percentile whose upper confidence bound every run reports (SLO's, else p99)
    confidence: float = 0.99        # ... at this confidence (benchmark.slo_confidence)
    judge_on_bound: bool = False    # capacity judges the SLO on that bound (benchmark.slo_confidence given)

    @classmethod
    def of(cls, benchmark) -> "Rules":
        """The rules of a spec's benchmark section."""
        return cls(min_duration_s=benchmark.min_duration, min_requests=benchmark.min_requests,
                   stability_percent=benchmark.stability_percent, min_tail_samples=benchmark.min_tail_samples,
                   max_late_ratio=benchmark.max_late_ratio,
                   judged_percentile=benchmark.slo.percentile if benchmark.slo else 50.0,
                   bound_percentile=benchmark.slo.percentile if benchmark.slo else 99.0,
                   confidence=benchmark.slo_confidence or 0.99,
                   judge_on_bound=benchmark.slo_confidence is not None)


def pkey(percentile: float) -> str:
    """'p99_ms' for 99, 'p99.9_ms' for 99.9."""
    return f"p{percentile:g}_ms"


def supported(samples: int, percentile: float, min_tail: int) -> bool:
    """A percentile is supported when at least min_tail samples lie above it."""
    return samples * (1.0 - percentile / 100.0) >= min_tail


def needed_samples(percentile: float, min_tail: int) -> int:
    """The fewest samples that support `percentile` (1000 for p99 with 10 above it)."""
    return math.ceil(min_tail / (1.0 - percentile / 100.0) - 1e-9)


def spread_percent(values: Sequence[float]) -> float:
    """(max - min) / mean of the values, in percent (inf when the mean is 0 or a value is missing)."""
    values = [v for v in values]
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return float("inf")
    mean = float(np.mean(values))
    return float((max(values) - min(values)) / mean * 100.0) if mean > 0 else float("inf")


def sub_windows(t_done: np.ndarray, t_key: np.ndarray, ok: np.ndarray, latency: np.ndarray, window_s: float,
                percentile: float, due: Optional[np.ndarray] = None, width_s: Optional[float] = None) -> list[dict]:
    """Throughput and the percentile in each sub-window of the window, with their noise bands.

    The window [0, window_s) is cut into parts of `width_s` (the run's sub-window), or into SUB_WINDOWS equal parts.
    t_done: completion times; t_key: the time a request belongs to its part by (due time open loop, completion
    closed loop); both from the window's start. Open loop (`due` given), `pace` is the successful completions over
    the requests due in the part: 1 when the server keeps up, whatever the random arrivals did. `band` is where the
    part's percentile would fall (about 95% of the time) if nothing changed through the window: the pooled
    window's quantiles at q +- 2 sqrt(q(1-q)/n), n the part's answers.
    """
    count = SUB_WINDOWS if not width_s else max(1, int(round(window_s / width_s)))
    return parts_between(t_done, t_key, ok, latency, np.linspace(0.0, window_s, count + 1), percentile, due)


def parts_between(t_done: np.ndarray, t_key: np.ndarray, ok: np.ndarray, latency: np.ndarray, edges,
                  percentile: float, due: Optional[np.ndarray] = None) -> list[dict]:
    """The parts of sub_windows between consecutive `edges` (seconds from the window's start)."""
    parts = []
    edges = [float(e) for e in edges]
    inside = ok & (t_key >= edges[0]) & (t_key < edges[-1])
    pooled = latency[inside]
    q = percentile / 100.0
    for low, high in zip(edges[:-1], edges[1:]):
        done = int((ok & (t_done >= low) & (t_done < high)).sum())
        mine = latency[ok & (t_key >= low) & (t_key < high)]
        part = {"from_s": low, "to_s": high, "rps": done / (high - low),
                pkey(percentile): float(np.percentile(mine, percentile)) if mine.size else float("nan"),
                "requests": int(mine.size), "band": None}
        if mine.size and pooled.size:
            half = 2.0 * math.sqrt(q * (1.0 - q) / mine.size)
            part["band"] = [float(v) for v in np.quantile(pooled, [max(0.0, q - half), min(1.0, q + half)])]
        if due is not None:
            due_here = int(((due >= low) & (due < high)).sum())
            part["pace"] = done / due_here if due_here else float("nan")
        parts.append(part)
    return parts


def _unstable(parts: list[dict], field: str, limit_percent: float) -> Optional[float]:
    """The spread (%) of `field` over the parts when it is beyond the limit and beyond sampling noise, else None."""
    spread = spread_percent([p[field] for p in parts])
    if spread <= limit_percent:
        return None
    if math.isinf(spread):
        return spread
    if field.startswith("p") and field.endswith("_ms"):  # a percentile: outside its band somewhere?
        bands = [(p[field], p["band"]) for p in parts]
        if all(band and band[0] <= value <= band[1] for value, band in bands):
            return None
    elif field == "rps":  # closed-loop counts: beyond two standard deviations of a count?
        counts = [p["rps"] * (p["to_s"] - p["from_s"]) for p in parts]
        noise = 2.0 * 100.0 / math.sqrt(max(1.0, min(counts)))
        if spread <= noise:
            return None
    return spread


def instabilities(parts: list[dict], rules: Rules) -> list[tuple[str, float]]:
    """(what, spread %) of throughput and the judged percentile where the parts disagree beyond the rules."""
    key = pkey(rules.judged_percentile)
    pace = bool(parts) and all("pace" in p for p in parts)
    found = []
    for what, field in (("throughput against the offered load" if pace else "throughput", "pace" if pace else "rps"),
                        (key[:-3], key)):
        spread = _unstable(parts, field, rules.stability_percent)
        if spread is not None:
            found.append((what, spread))
    return found


@dataclass(frozen=True)
class Settled:
    """Where a run's figures come from: sub-windows [first, count), judged in parts of `group` consecutive
    sub-windows, and whether those parts agree. `marks`: the sub-window boundaries 0..count as they were taken,
    in seconds from the first; the run's final judgment cuts its span at the same instants (`edges_s`)."""
    first: int
    count: int
    marks: tuple[float, ...]
    stable: bool
    group: int = 1

    @property
    def used(self) -> int:
        return self.count - self.first

    @property
    def edges_s(self) -> list[float]:
        """The edges of the judged parts, in seconds from the span's start."""
        return [self.marks[i] - self.marks[self.first] for i in range(self.first, self.count + 1, self.group)]


def settle(t_done: np.ndarray, t_key: np.ndarray, ok: np.ndarray, latency: np.ndarray, marks, count: int,
           rules: Rules, due: Optional[np.ndarray] = None, between=None) -> Settled:
    """The last stable span of the `count` sub-windows between `marks` (count + 1 boundaries, in seconds from the
    first; times from the same instant).

    Stable when the last SUB_WINDOWS sub-windows agree (instabilities finds nothing); the span then reaches back
    over every earlier sub-window that still agrees with it, so a run that settled early keeps all its samples.
    A run extended past its duration is also judged in coarser parts: the last SUB_WINDOWS parts of `group`
    sub-windows each (2, 3, ... while they fit), which is the rule a run of that longer duration would be judged
    by. Noise that only averages out over more than a sub-window (a shared machine's) settles there, where a drift
    still shows. The smallest part that agrees is used. Unstable: the span is the last SUB_WINDOWS sub-windows, and
    `stable` is False. `between(edges)`, when given, replaces parts_between (the caller's cached version over the
    same samples).
    """
    marks = tuple(float(m) for m in marks[:count + 1])
    if len(marks) != count + 1:
        raise ValueError(f"settle: {count} sub-windows need {count + 1} marks, got {len(marks)}")
    between = between or (lambda edges: parts_between(t_done, t_key, ok, latency, edges, rules.judged_percentile, due))
    last = max(0, count - SUB_WINDOWS)

    def agree(first: int, group: int) -> bool:
        return not instabilities(between([marks[i] for i in range(first, count + 1, group)]), rules)

    for group in range(1, count // SUB_WINDOWS + 1):
        first = count - SUB_WINDOWS * group
        if agree(first, group):
            while first - group >= 0 and agree(first - group, group):
                first -= group
            return Settled(first, count, marks, True, group)
    return Settled(last, count, marks, False)


def judged_parts(settled: dict, t_done: np.ndarray, t_key: np.ndarray, ok: np.ndarray, latency: np.ndarray,
                 window_s: float, percentile: float, due: Optional[np.ndarray] = None) -> list[dict]:
    """The parts a measured run is judged by (times from its span's start): cut at the instants its settling was
    judged at (`edges_s` of its samples file's `settled`), so the final verdict is the one that stopped the run;
    a samples file without them: its window in SUB_WINDOWS parts of its sub-window width (or equal thirds)."""
    if settled.get("edges_s"):
        return parts_between(t_done, t_key, ok, latency, settled["edges_s"], percentile, due)
    width = settled.get("sub_window_s")
    group = int(settled.get("windows_grouped", 1))
    return sub_windows(t_done, t_key, ok, latency, window_s, percentile, due=due,
                       width_s=width * group if width else None)


def upper_bound(latencies: np.ndarray, percentile: float, confidence: float = 0.99) -> Optional[float]:
    """An upper bound on the true `percentile` at `confidence`, from the order statistics alone.

    The k-th smallest of n samples lies above the true q-quantile unless k or more samples fell below it, which
    happens with probability P(Binomial(n, q) >= k); the bound is the smallest k whose chance of lying below the
    quantile is at most 1 - confidence (no normality assumed, as MLPerf LoadGen's early-stopping estimate).
    None when even the largest sample is not a bound at that confidence (too few samples: 459 for p99 at 99%).
    """
    from scipy.stats import binom

    n = int(latencies.size)
    if n == 0:
        return None
    k = int(binom.ppf(confidence, n, percentile / 100.0)) + 1  # P(Bin(n, q) <= k - 1) >= confidence
    if k > n:
        return None
    return float(np.partition(latencies, k - 1)[k - 1])


def bound_samples(percentile: float, confidence: float = 0.99) -> int:
    """The fewest samples for which upper_bound gives a bound (the maximum is one when q^n <= 1 - confidence)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(percentile / 100.0) - 1e-12)


def judge(entry: dict, parts: list[dict], rules: Rules, server_stopped: Optional[str] = None) -> list[str]:
    """The reasons a measured run is invalid (empty: valid). `entry` is the run's summary entry."""
    reasons = []
    key = pkey(rules.judged_percentile)
    if entry["window_s"] < rules.min_duration_s * 0.99:  # a window is timed: 4.9998 s of a 5 s one is 5 s
        reasons.append(f"measured {entry['window_s']:.1f} s, less than benchmark.min_duration "
                       f"({rules.min_duration_s:g} s)")
    if entry["requests"] < rules.min_requests:
        reasons.append(f"{entry['requests']} requests in the window, fewer than benchmark.min_requests "
                       f"({rules.min_requests})")
    good = entry["requests"] - entry["failures"]
    if not supported(good, rules.judged_percentile, rules.min_tail_samples):
        need = needed_samples(rules.judged_percentile, rules.min_tail_samples)
        reasons.append(f"{key[:-3]} rests on {good} answers; it needs {need} ({rules.min_tail_samples} above it, "
                       "benchmark.min_tail_samples): measure longer")
    moved = [f"{what} moved {'n/a' if math.isinf(spread) else f'{spread:.0f}%'}"
             for what, spread in instabilities(parts, rules)]
    if moved:
        reason = (f"unstable: {' and '.join(moved)} across the last {len(parts)} sub-windows, beyond sampling noise "
                  f"(benchmark.stability_percent: {rules.stability_percent:g}%)")
        total = entry.get("measured_total_s")
        if entry.get("over_slo") and total is not None:
            reason += (f", stopped after {total:.0f} s: every sub-window was already over the SLO, a failure that "
                       "measuring longer cannot undo")
        elif total is not None and entry.get("max_duration_s"):
            reason += (f", still after measuring {total:.0f} s (benchmark.max_duration: {entry['max_duration_s']:g} s):"
                       " raise benchmark.max_duration, lower the load, or give the server and generator quieter cores")
        reasons.append(reason)
    late = entry.get("late_ratio")
    if late is not None and late > rules.max_late_ratio:
        reasons.append(f"{late:.1%} of requests started late (more than {entry['late_tolerance_ms']:g} ms after "
                       f"their scheduled time; limit {rules.max_late_ratio:.0%}): the generator could not keep the "
                       "schedule (or benchmark.max_in_flight requests were already in flight)")
    if entry.get("generator_bound"):
        reasons.append(f"generator-bound: the busiest load generator used {entry['generator_cpu_percent']:.0f}% of a "
                       f"core (> {GENERATOR_BOUND_PERCENT:.0f}%); add WORKERS or the numbers describe the generator")
    little = entry.get("littles_law")
    if little and not little["holds"]:
        reasons.append(f"Little's law does not hold: {little['in_flight_mean']:.2f} requests in flight on average, "
                       f"but throughput x latency is {little['throughput_x_latency']:.2f}: requests went unrecorded")
    if server_stopped:
        reasons.append(f"the server stopped: {server_stopped}")
    return reasons


def littles_law(in_flight_mean: Optional[float], t_done: np.ndarray, latency_ms: np.ndarray,
                window_s: float) -> Optional[dict]:
    """L against lambda x W inside the window: the users' own count of outstanding requests (integrated as they
    become due or sent and are answered) against the recorded time each request spent in the system, clipped to
    the window (so a slow request straddling an edge counts only its part inside). They differ when requests
    were outstanding but never recorded, or recorded with a latency they did not have."""
    if in_flight_mean is None or not window_s or not math.isfinite(window_s):
        return None
    finite = np.isfinite(latency_ms)
    end, start = t_done[finite], t_done[finite] - latency_ms[finite] / 1000.0
    product = float(np.clip(np.minimum(end, window_s) - np.maximum(start, 0.0), 0.0, None).sum() / window_s)
    ratio = in_flight_mean / product if product > 0 else (1.0 if in_flight_mean == 0 else float("inf"))
    return {"in_flight_mean": in_flight_mean, "throughput_x_latency": product, "ratio": ratio,
            "tolerance": LITTLE_TOLERANCE, "holds": bool(abs(ratio - 1.0) <= LITTLE_TOLERANCE)}
