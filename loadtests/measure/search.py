"""The capacity search, written once (make capacity, and every tune trial): the highest arrival rate each
protocol x payload sustains within the SLO.

For each cell a short closed-loop probe (one user) gives a starting rate (half its throughput). Open-loop
probes then double the rate until one fails and halve it until one passes (the bracket), and bisect until the
bracket is within `precision` of its lower end. Every probe is a full open-loop run (warm-up, window, drain),
judged by the same validity rules as a bench run. A probe passes when its SLO percentile (from the scheduled
send times) is within the SLO, its failure ratio within benchmark.failure_threshold, and it is valid, or broke
only the latency-stability rule while the SLO percentile of each of its sub-windows met the SLO.

A valid-looking pass that the rules reject (unstable, too few samples) is measured once more with twice the
window; a failing probe is not retried (an overloaded queue is unstable by nature). A probe the generator could
not keep up with (late starts, generator-bound) ends the upward search: the capacity found is then a lower bound
limited by the generator, and says so.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from loadtests.analyze import validity
from loadtests.analyze.limits import MAX_PROBES
from loadtests.drive.payloads import wire_name
from loadtests.measure import run
from spec.errors import SpecError

MIN_RATE_FRACTION = 1 / 64  # below start x this, the SLO is out of reach (capacity 0)
GENERATOR_REASONS = ("started late", "generator-bound")
MAX_WINDOW_FACTOR = 10  # a probe's window grows to support the SLO percentile, up to this x benchmark.duration


@dataclass
class Cell:
    """The search state of one protocol x payload."""
    protocol: str
    payload: str
    wire: str
    probes: list[dict] = field(default_factory=list)
    closed_probe: Optional[dict] = None
    limited_by: Optional[str] = None


def probe_window(rate: float, slo_percentile: float, rules: validity.Rules, duration_s: float) -> float:
    """A window long enough at `rate` for the SLO percentile to be supported and for benchmark.min_requests
    (within MAX_WINDOW_FACTOR): a window the validity rules would reject for too few requests is a probe wasted."""
    needed = max(validity.needed_samples(slo_percentile, rules.min_tail_samples), rules.min_requests)
    if rules.judge_on_bound:
        needed = max(needed, validity.bound_samples(slo_percentile, rules.confidence))
    return float(min(max(duration_s, scheduled_for(needed) / rate), duration_s * MAX_WINDOW_FACTOR))


def scheduled_for(count: int) -> float:
    """How many requests to schedule on average for a window to hold `count` of them: 15% more, and enough that a
    Poisson schedule's count (standard deviation sqrt(mean)) falls 3 deviations short of the mean only once in
    about 700 windows (a CI run's 3.4 s window at 33.66 req/s, 115 scheduled, held 99 of the 100 it needed)."""
    poisson = ((3.0 + math.sqrt(9.0 + 4.0 * count)) / 2.0) ** 2  # mean - 3 sqrt(mean) = count
    return max(1.15 * count, poisson)


def _worst_part_within(entry: dict, slo) -> bool:
    """Whether the SLO percentile of every sub-window is within the SLO (a pass that no drift can undo)."""
    parts = entry.get("sub_windows") or []
    values = [part.get(slo.key) for part in parts]
    return bool(parts) and all(v is not None and math.isfinite(v) and v <= slo.latency_ms for v in values)


def trusted(entry: dict, slo) -> bool:
    """Valid, or invalid only because latency moved between sub-windows while each of them met the SLO."""
    if entry["valid"]:
        return True
    latency_moves = [r for r in entry["invalid_reasons"] if r.startswith(f"unstable: {slo.key[:-3]} moved")]
    return len(latency_moves) == len(entry["invalid_reasons"]) and _worst_part_within(entry, slo)


def verdict(entry: dict, slo, failure_threshold: float, on_bound: bool = False) -> dict:
    """A probe's row in capacity.json. on_bound: the SLO is judged on the percentile's upper confidence bound
    (benchmark.slo_confidence), which a probe with too few samples for one cannot meet."""
    value = entry.get(slo.key + "_upper") if on_bound else entry.get(slo.key)
    within = value is not None and math.isfinite(value) and value <= slo.latency_ms
    healthy = entry["failure_ratio"] <= failure_threshold
    return {"offered_rps": entry["offered_rps"], "achieved_rps": entry["rps"], slo.key: entry.get(slo.key),
            slo.key + "_upper": entry.get(slo.key + "_upper"), "judged_on": slo.key + "_upper" if on_bound else slo.key,
            "service_p50_ms": entry.get("service_p50_ms"), "late_ratio": entry.get("late_ratio"),
            "failure_ratio": entry["failure_ratio"], "window_s": entry["window_s"], "requests": entry["requests"],
            "valid": entry["valid"], "invalid_reasons": entry["invalid_reasons"],
            "meets_slo": bool(within and healthy and trusted(entry, slo)), "within_slo": bool(within),
            "under_failure_threshold": bool(healthy), "breakdown": entry.get("breakdown"),
            "batch_size_mean": (entry.get("server") or {}).get("batch_size_mean"),
            "server_core_ms_per_request": entry.get("server_core_ms_per_request")}


def _generator_limited(row: dict) -> bool:
    return any(any(mark in reason for mark in GENERATOR_REASONS) for reason in row["invalid_reasons"])


def search(cell: Cell, run_open: Callable[[float, float], dict], run_closed: Callable[[], dict], slo,
           rules: validity.Rules, duration_s: float, precision: float, failure_threshold: float,
           log: Callable[[str], None] = print, max_probes: int = MAX_PROBES, start: Optional[float] = None,
           prune: bool = False) -> dict:
    """Bracket and bisect the highest passing rate for one cell; `run_open(rate, window_s)` returns a run entry.

    `start` (a rate known to be near the answer, e.g. another configuration's capacity) replaces the closed-loop
    probe; with `prune`, a first probe that fails ends the search at once (limited_by "pruned": below `start`).
    """
    if start is None:
        closed = run_closed()
        cell.closed_probe = {"users": closed["users"], "rps": closed["rps"], slo.key: closed.get(slo.key),
                             "p50_ms": closed["p50_ms"], "valid": closed["valid"]}
        unloaded = closed.get(slo.key)
        start = max(closed["rps"] / 2.0, 0.5)
        log(f"  closed-loop probe: {closed['rps']:.1f} req/s at 1 user, {slo.key[:-3]} "
            f"{unloaded or float('nan'):.1f} ms; open-loop search starts at {start:.1f} req/s")
    else:
        log(f"  open-loop search starts at {start:.1f} req/s" + (" (pruned if it misses the SLO there)" if prune
                                                                else ""))
    passed: Optional[float] = None
    failed: Optional[float] = None

    def probe(rate: float) -> bool:
        window = probe_window(rate, slo.percentile, rules, duration_s)
        row = verdict(run_open(rate, window), slo, failure_threshold, rules.judge_on_bound)
        if not row["meets_slo"] and row["within_slo"] and row["under_failure_threshold"] \
                and not _generator_limited(row) and len(cell.probes) + 1 < max_probes:
            log(f"    {rate:.1f} req/s: within the SLO but invalid ({'; '.join(row['invalid_reasons'])}): "
                f"measuring again with a {2 * window:.0f} s window")
            row["retried"] = True
            cell.probes.append(row)
            row = verdict(run_open(rate, 2 * window), slo, failure_threshold, rules.judge_on_bound)
        cell.probes.append(row)
        shown, bound = row[slo.key], row[slo.key + "_upper"]
        log(f"    {rate:8.1f} req/s offered, {row['achieved_rps']:8.1f} achieved, {slo.key[:-3]} "
            f"{shown if shown is not None else float('nan'):8.1f} ms"
            + (f" (bound {bound if bound is not None else float('nan'):.1f} ms at {rules.confidence:.0%})"
               if rules.judge_on_bound else "") + ": " + ("PASS" if row["meets_slo"] else "fail")
            + ("" if row["valid"] else f" (invalid: {'; '.join(row['invalid_reasons'])})"))
        if _generator_limited(row):
            cell.limited_by = "generator"
        return row["meets_slo"]

    rate = start
    while len(cell.probes) < max_probes:  # the bracket: double up from a pass, halve down from a fail
        if probe(rate):
            passed = rate
            if failed is not None or cell.limited_by:
                break
            rate *= 2
        else:
            failed = rate
            if passed is not None:
                break
            if prune:
                cell.limited_by = "pruned"
                break
            rate /= 2  # (also when the generator could not keep up: a lower rate it may)
            if rate < start * MIN_RATE_FRACTION:
                cell.limited_by = cell.limited_by or "slo"
                break
    while passed is not None and failed is not None and (failed - passed) / passed > precision \
            and len(cell.probes) < max_probes and cell.limited_by != "generator":
        middle = (passed + failed) / 2
        if probe(middle):
            passed = middle
        else:
            failed = middle
    if cell.limited_by is None and len(cell.probes) >= max_probes and not (
            passed is not None and failed is not None and (failed - passed) / passed <= precision):
        cell.limited_by = "probes"
    return {"protocol": cell.protocol, "payload": cell.payload, "wire": cell.wire, "slo": slo.model_dump(),
            "capacity_rps": passed or 0.0, "bracket": [passed, failed],
            "precision": precision, "limited_by": cell.limited_by, "closed_probe": cell.closed_probe,
            "probes": cell.probes}


class _ServerStopped(Exception):
    pass


def measure_cells(current, log: Callable[[str], None], starts: Optional[dict] = None, prune: bool = False,
                  runs: Optional[list] = None, profile: bool = False) -> tuple[list[dict], bool]:
    """The capacity search of every cell of a session (bench.Session) whose spec is in open mode.

    `starts` maps (protocol, payload) to a starting rate (see search); every measured run entry is appended to
    `runs`. Returns the cells' results and whether the server stopped (the search then ends early). With
    `profile`, one more window at each cell's capacity traces the server (`result["profile"]`); it is not a probe.
    """
    settings = current.spec.benchmark
    slo = settings.slo
    runs = [] if runs is None else runs
    results: list[dict] = []

    def measured(step, window_s: float, warmup_s: float, profile_dir=None) -> dict:
        # a probe's window may be longer than benchmark.duration: it may settle for as many times longer; an open
        # probe stops settling once each of its last sub-windows is over the SLO (it fails however long it runs)
        longest = current.target.longest_s * window_s / current.target.duration_s
        target = dataclasses.replace(current.target, duration_s=window_s, warmup_s=warmup_s, max_duration_s=longest,
                                     fail_over=(slo.percentile, slo.latency_ms) if step.rate is not None else None,
                                     profile_dir=profile_dir)
        log(f"  [{len(runs) + 1}] {step.label}: warm-up {warmup_s:g}s, measuring {window_s:.0f}s")
        entry = run.run_and_measure(step, target, current.run_dir, current.per_request, current.payloads.sizes,
                                    current.rules, current.server_gone)
        if current.server_gone():
            runs.append(entry)
            raise _ServerStopped()
        return entry

    try:
        for protocol, payload in current.cells:
            log(f"{run.PROTOCOL_LABEL[protocol]} {wire_name(protocol, payload)}:")
            cell = Cell(protocol, payload, wire_name(protocol, payload))

            def run_open(rate: float, window_s: float) -> dict:
                entry = measured(run.Step(protocol, payload, rate=rate, tag=f"p{len(cell.probes) + 1}"),
                                 window_s, settings.warmup)
                runs.append(entry)
                return entry

            def run_closed() -> dict:
                short = max(2.0, min(settings.duration, 5.0))
                return measured(run.Step(protocol, payload, users=1, tag="probe"), short, min(settings.warmup, 2.0))

            start = (starts or {}).get((protocol, payload))
            results.append(search(cell, run_open, run_closed, slo, current.rules, settings.duration,
                                  settings.precision, settings.failure_threshold, log, start=start, prune=prune))
            rate = results[-1]["capacity_rps"]
            if profile and rate:
                log(f"  the server traced at the capacity, {rate:.4g} req/s:")
                traced = measured(run.Step(protocol, payload, rate=rate, tag="profile"), settings.duration,
                                  settings.warmup, profile_dir=current.run_dir / "profile")
                results[-1]["profile"] = {"offered_rps": rate, "p50_ms": traced["p50_ms"],
                                          **(traced.get("profile") or {"file": None, "error": "no trace reported"})}
    except _ServerStopped:
        log("the server stopped: the search ends here")
        return results, True
    return results, False


def open_loop_spec(spec, command: str = "capacity"):
    """The spec in open mode, or a SpecError when it has no latency objective."""

    settings = spec.benchmark
    if settings.slo is None:
        raise SpecError(f"{command} needs a latency objective: --slo p99:100ms (make {command} SLO=p99:100ms) or "
                        "benchmark.slo in the spec")
    return spec.model_copy(update={"benchmark": settings.model_copy(update={"mode": "open"})})
