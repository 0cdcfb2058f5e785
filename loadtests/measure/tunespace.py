"""What `make tune` tries: the search space and the two strategies, as pure functions of the trials so far.

A configuration is a plain dict of knobs (spec.tuning.KNOBS; the batching knobs only when batching is on). Both
strategies are replays: `next_config(trials)` walks its plan from the start, reads the result of every step
already measured and returns the first configuration not measured yet. So a resumed search, given the same
trials, continues exactly where the interrupted one stopped.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from spec.errors import SpecError
from spec.tuning import BATCHING_KNOBS, SERVING_KNOBS, config_of

TIMEOUTS_US = (0, 1000, 2000, 5000, 10000)
BATCH_SIZES = (4, 8, 16, 32)
PROTOCOL_OF_THREADS = {"rest_api_num_threads": "rest", "grpc_max_threads": "grpc"}


def key(config: dict) -> str:
    """The canonical text of a configuration (equal configurations, equal keys)."""
    return json.dumps(normal(config), sort_keys=True)


def normal(config: dict) -> dict:
    """The configuration without the batching knobs when batching is off (they do nothing then)."""
    return {k: v for k, v in config.items() if config.get("batching") or k not in BATCHING_KNOBS}


@dataclass(frozen=True)
class Space:
    """Candidates per knob, the baseline, and the adoption rule."""
    values: dict            # knob -> tuple of candidates ('sized' thread counts resolved by `sized`)
    baseline: dict          # the spec's own serving configuration: always trial 1
    min_gain: float = 0.10

    def candidates(self, knob: str) -> tuple:
        return tuple(self.values.get(knob, ()))

    def initial_batching(self) -> dict:
        """Where the batching sub-search starts: the baseline's batching values when they are candidates, else
        the middle candidate of each batching knob."""
        start = dict(self.baseline, batching=True)
        for knob in BATCHING_KNOBS:
            options = self.candidates(knob)
            if start.get(knob) not in options:
                start[knob] = options[(len(options) - 1) // 2]
        return start

    def grid(self) -> list[dict]:
        """Every combination, the baseline first (batching-off combinations need no batching knobs)."""
        serving = [self.candidates(k) for k in (*SERVING_KNOBS, "image")]
        found = [self.baseline]
        for on in self.candidates("batching"):
            batching = [self.candidates(k) for k in BATCHING_KNOBS] if on else [()]
            for batch_values in itertools.product(*batching):
                for serve_values in itertools.product(*serving):
                    config = {"batching": on, **dict(zip(BATCHING_KNOBS, batch_values)),
                              **dict(zip((*SERVING_KNOBS, "image"), serve_values))}
                    found.append(normal(config))
        unique, seen = [], set()
        for config in found:
            if key(config) not in seen:
                seen.add(key(config))
                unique.append(config)
        return unique


def derive(spec, cells: Sequence[tuple[str, str]], backend: str, log=print, cpus: Optional[int] = None) -> Space:
    """The search space of `spec`'s tune section, with the defaults filled from the model and the machine."""
    tune, serving, settings = spec.tune, spec.serving, spec.benchmark
    cpus = cpus or os.cpu_count() or 1
    protocols = {protocol for protocol, _ in cells}
    per_request = settings.batch_size
    slo_us = settings.slo.latency_ms * 1000.0 if settings.slo else math.inf
    baseline = normal(config_of(serving))
    defaults = {
        "batching": (False, True),
        "max_batch_size": tuple(s for s in BATCH_SIZES if s >= per_request) or (per_request, 2 * per_request),
        "batch_timeout_micros": tuple(t for t in TIMEOUTS_US if t <= slo_us / 4) or (0,),
        "num_batch_threads": tuple(sorted({1, cpus})),
        "max_enqueued_batches": (serving.batching.max_enqueued_batches,),
        "allowed_batch_sizes": ("any",),
        "intra_op_parallelism": tuple(sorted({0, 1, cpus})),
        "inter_op_parallelism": tuple(sorted({0, 1, cpus})),
        "rest_api_num_threads": (0, "sized"),
        "grpc_max_threads": (0, "sized"),
        "image": (serving.image,),
    }
    values = {}
    for knob, default in defaults.items():
        given = getattr(tune, knob)
        values[knob] = tuple(given) if given is not None else default
    for knob, protocol in PROTOCOL_OF_THREADS.items():
        if protocol not in protocols and values[knob] != (baseline[knob],):
            if getattr(tune, knob) is not None:
                log(f"tune: {knob} is not searched: no {protocol} cell is tuned")
            values[knob] = (baseline[knob],)
    if backend != "docker" and values["image"] != (serving.image,):
        log("tune: tune.image is not searched: image variants apply to the docker backend only")
        values["image"] = (serving.image,)
    too_small = [size for size in values["max_batch_size"] if size < per_request]
    if too_small:
        raise SpecError(f"{spec.where('tune', 'max_batch_size')}: tune.max_batch_size {too_small} is below the "
                        f"request batch size {per_request} (benchmark.batch_size): such a server rejects every "
                        "request; list sizes of at least that")
    min_gain = max(tune.min_gain, settings.precision)
    if min_gain > tune.min_gain:
        log(f"tune: a configuration must beat the best by more than {min_gain:.0%} (benchmark.precision), not "
            f"{tune.min_gain:.0%} (tune.min_gain): a capacity search only brackets a capacity to within its precision")
    return Space(values, baseline, min_gain)


def sized(space: Space, baseline_cells: Sequence[dict], slo_latency_ms: float, cpus: Optional[int] = None) -> Space:
    """The space with 'sized' thread counts replaced: twice the requests in flight at the baseline's capacity
    (Little's law: rate x latency, the SLO latency being the most a request may take), at least the CPU count."""
    cpus = cpus or os.cpu_count() or 1
    values = dict(space.values)
    for knob, protocol in PROTOCOL_OF_THREADS.items():
        if "sized" not in values[knob]:
            continue
        rates = [c["capacity_rps"] for c in baseline_cells if c["protocol"] == protocol and c.get("capacity_rps")]
        in_flight = max(rates, default=0.0) * slo_latency_ms / 1000.0
        count = max(cpus, math.ceil(2 * in_flight))
        resolved = [count if v == "sized" else v for v in values[knob]]
        values[knob] = tuple(dict.fromkeys(v for v in resolved if not (v == 4 * cpus and 0 in resolved)))
    return Space(values, space.baseline, space.min_gain)


def score(trial: dict) -> Optional[float]:
    """A measured trial's figure: the geometric mean of its cells' capacities (None: pruned or failed)."""
    return trial.get("capacity_rps") if trial.get("status") in ("measured", "limited") else None


def ceiling(trial: dict) -> Optional[float]:
    """Where a trial's capacity may really lie at most: its own figure when measured; for a limited trial (a
    cell's search stopped where the generator could not keep up, or out of probes) the geometric mean of each such
    cell's failing rate, the rest at their capacity (inf: no failing rate was found, so no ceiling is known)."""
    if trial.get("status") != "limited":
        return score(trial)
    tops = []
    for cell in trial.get("cells", []):
        if cell.get("limited_by") in ("generator", "probes"):
            failed = (cell.get("bracket") or [None, None])[1]
            if not failed:
                return math.inf
            tops.append(failed)
        else:
            tops.append(cell.get("capacity_rps") or 0.0)
    return math.prod(tops) ** (1.0 / len(tops)) if tops else math.inf


def cost_gain(trial: dict, than: dict) -> Optional[float]:
    """How many times less server CPU per answered request `trial` needs than `than`, at their capacities (the
    geometric mean over the cells both measured; None without the figures)."""
    ratios = []
    for name, parts in (trial.get("breakdown") or {}).items():
        mine = (parts or {}).get("server_core_ms_per_request")
        theirs = ((than.get("breakdown") or {}).get(name) or {}).get("server_core_ms_per_request")
        if mine and theirs:
            ratios.append(theirs / mine)
    return math.prod(ratios) ** (1.0 / len(ratios)) if ratios else None


def better(trial: dict, than: Optional[dict], min_gain: float) -> bool:
    """Whether `trial` replaces `than` as the best: higher by more than min_gain (noise is not a gain). When
    `than`'s capacity is only a lower bound (limited) and `trial`'s lies below where `than`'s may really be (its
    ceiling), the capacities alone show no gain: `trial` must also need less server CPU per request by more than
    min_gain, the cost that bounds a capacity on a busy CPU."""
    mine = score(trial)
    if mine is None:
        return False
    if than is None or score(than) is None:
        return True
    if mine <= score(than) * (1.0 + min_gain):
        return False
    if mine > (ceiling(than) or 0.0):
        return True
    cheaper = cost_gain(trial, than)
    return cheaper is not None and cheaper > 1.0 + min_gain


class _Replay:
    """Walks a plan against the recorded trials; `propose` raises _Next for the first unmeasured config."""

    def __init__(self, trials: Sequence[dict], min_gain: float):
        self.done = {key(t["config"]): t for t in trials}
        self.min_gain = min_gain
        self.best: Optional[dict] = None
        self.best_on: Optional[dict] = None

    def propose(self, config: dict) -> Optional[dict]:
        config = normal(config)
        found = self.done.get(key(config))
        if found is None:
            raise _Next(config)
        if better(found, self.best, self.min_gain):
            self.best = found
        if config.get("batching") and better(found, self.best_on, self.min_gain):
            self.best_on = found
        return found


class _Next(Exception):
    def __init__(self, config: dict):
        self.config = config


def next_config(space: Space, strategy: str, trials: Sequence[dict]) -> Optional[dict]:
    """The next configuration to measure, or None when the strategy has covered its plan."""
    if strategy == "grid":
        done = {key(t["config"]) for t in trials}
        return next((c for c in space.grid() if key(c) not in done), None)
    replay = _Replay(trials, space.min_gain)
    try:
        _quick_plan(space, replay)
    except _Next as wanted:
        return wanted.config
    return None


def _quick_plan(space: Space, replay: _Replay) -> None:
    """Coordinate search: the baseline; batching flipped; each batching knob from the best batching
    configuration; then each serving knob (threads, image) from the best configuration so far."""
    replay.propose(space.baseline)
    if space.baseline.get("batching") and False in space.candidates("batching"):
        replay.propose(dict(space.baseline, batching=False))
    if True in space.candidates("batching"):
        initial = space.baseline if space.baseline.get("batching") else space.initial_batching()
        replay.propose(initial)
        for knob in BATCHING_KNOBS:
            for value in space.candidates(knob):
                reference = (replay.best_on or replay.done[key(initial)])["config"]
                if reference.get(knob) != value:
                    replay.propose(dict(reference, **{knob: value}))
    for knob in (*SERVING_KNOBS, "image"):
        for value in space.candidates(knob):
            reference = (replay.best or replay.done[key(space.baseline)])["config"]
            if reference.get(knob) != value:
                replay.propose(dict(reference, **{knob: value}))
