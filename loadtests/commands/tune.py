"""`make tune SLO=p99:200ms`: the TF Serving configuration with the highest capacity under the SLO.

Each trial deploys one configuration through the same session as bench and capacity (export, deploy, answer
checks, Prometheus on), runs the capacity search of every protocol x payload cell, keeps the breakdown at the
capacity found and stops the server. The spec's own configuration is trial 1, the baseline. After every trial
tune.json is rewritten (the checkpoint): the same command finds an unfinished search of the same spec, SLO,
space and settings in tune/latest and resumes it. Ctrl-C stops the trial's server (the session's cleanup).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

from deploy.deployment import already_serving, deployment_for
from loadtests.analyze.resultsdb import tune_summary
from loadtests.measure import tunespace
from loadtests.measure.run import plan
from loadtests.measure.search import measure_cells, open_loop_spec
from loadtests.measure.session import (EXIT_INVALID, EXIT_OK, EXIT_UNINFORMATIVE, Generators, new_run_dir, point_latest,
                                       record_history, session, with_monitoring)
from loadtests.report import capacitypage, reportpage, tunereport
from spec.errors import HarnessError, SpecError, UsageError
from spec.loader import tune_result_path
from spec.results import TuneResult
from spec.tuning import apply_config

TUNE_FILE = "tune.json"


def search_key(spec, cells, space: tunespace.Space, backend: str) -> str:
    """What must be equal for a rerun to resume a search: the spec file, the cells, the SLO, the space, the
    strategy and the measurement settings."""
    settings = spec.benchmark
    facts = {"spec": spec.sha256, "model": spec.name, "cells": [list(c) for c in cells],
             "slo": settings.slo.model_dump(), "strategy": spec.tune.strategy, "backend": backend,
             "space": {k: list(v) for k, v in space.values.items()}, "baseline": space.baseline,
             "min_gain": space.min_gain, "prune_below": spec.tune.prune_below,
             "measure": [settings.duration, settings.warmup, settings.precision, settings.arrival,
                         settings.failure_threshold]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _resumable(spec, wanted_key: str, log) -> Optional[dict]:
    latest = tune_result_path(spec, "latest")
    try:
        state = json.loads(latest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("complete"):
        return None
    try:
        checked = TuneResult.from_dict(state, str(latest.resolve()))  # a newer layout is refused first
    except UsageError as exc:
        log(f"tune: not resuming: {exc}")
        return None
    if checked.key != wanted_key:
        log(f"tune: not resuming {latest.parent.resolve()}: it searched another spec, SLO, space or settings")
        return None
    return checked.to_dict()  # the checkpoint the search goes on from (rewritten whole after each trial)


def label(config: dict, baseline: dict) -> str:
    """What a configuration changes from the baseline, in words ('the baseline' when nothing)."""
    parts = []
    if config.get("batching"):
        parts.append(f"batching max_batch_size {config['max_batch_size']}, timeout "
                     f"{config['batch_timeout_micros'] / 1000:g} ms, {config['num_batch_threads']} threads, "
                     f"queue {config['max_enqueued_batches']}"
                     + ("" if config.get("allowed_batch_sizes") == "any" else f", sizes {config['allowed_batch_sizes']}"))
    elif baseline.get("batching"):
        parts.append("batching off")
    names = {"intra_op_parallelism": "intra-op", "inter_op_parallelism": "inter-op",
             "rest_api_num_threads": "REST threads", "grpc_max_threads": "gRPC threads", "image": "image"}
    for knob, name in names.items():
        if config.get(knob) != baseline.get(knob):
            parts.append(f"{name} {config.get(knob) if config.get(knob) != 0 else 'default'}")
    return "; ".join(parts) or "the baseline (the spec's configuration)"


def _geometric_mean(values) -> float:
    values = list(values)
    if len(values) == 1:
        return float(values[0])
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values and all(v > 0 for v in values) else 0.0


def _at_capacity(result: dict, slo) -> dict:
    """A cell's figures at its highest passing probe (or, when none passed, its first probe)."""
    passing = [p for p in result["probes"] if p["meets_slo"]]
    probe = max(passing, key=lambda p: p["offered_rps"]) if passing else (result["probes"] or [None])[0]
    if probe is None:
        return {}
    parts = dict(probe.get("breakdown") or {})
    batch = probe.get("batch_size_mean")
    model = parts.get("model_ms")
    parts.update(at="capacity" if passing else "first probe (missed the SLO)", offered_rps=probe["offered_rps"],
                 achieved_rps=probe["achieved_rps"], slo_ms=probe.get(slo.key), batch_size_mean=batch,
                 model_ms_per_request=(model / batch if batch else model) if model is not None else None,
                 server_core_ms_per_request=probe.get("server_core_ms_per_request"))
    return parts


def trial_record(index: int, config: dict, baseline: dict, results: list, stopped: bool, slo, started: float,
                 report_dir: Path, cells, error: Optional[str] = None) -> dict:
    """One entry of tune.json's trials: status, capacity (the cells' geometric mean), breakdown, validity."""
    record = {"index": index, "config": config, "label": label(config, baseline),
              "changes": {k: v for k, v in config.items() if baseline.get(k) != v},
              "report_dir": str(report_dir), "duration_s": round(time.monotonic() - started, 1), "error": error,
              "cells": [], "breakdown": {}, "capacity_rps": None, "valid": False, "invalid_reasons": []}
    if error is not None:
        record.update(status="failed", invalid_reasons=[error])
        return record
    for result in results:
        name = f"{result['protocol']} {result['wire']}"
        record["cells"].append({k: result[k] for k in ("protocol", "payload", "wire", "capacity_rps", "bracket",
                                                       "limited_by")} | {"probes": len(result["probes"])})
        record["breakdown"][name] = _at_capacity(result, slo)
    limits = [c["limited_by"] for c in record["cells"]]
    reasons = [f"{c['protocol']} {c['wire']}: {c['limited_by']}" for c in record["cells"]
               if c["limited_by"] in ("generator", "probes")]
    if stopped or len(results) < len(cells):
        reasons.append("the server stopped during the trial")
    if "pruned" in limits:
        record.update(status="pruned", valid=not reasons, invalid_reasons=reasons,
                      pruned_below_rps={f"{c['protocol']} {c['wire']}": c["bracket"][1]
                                        for c in record["cells"] if c["limited_by"] == "pruned"})
        return record
    status = "failed" if stopped or len(results) < len(cells) else ("limited" if reasons else "measured")
    record.update(status=status, valid=not reasons, invalid_reasons=reasons,
                  capacity_rps=None if status == "failed" else _geometric_mean(c["capacity_rps"] for c in record["cells"]))
    return record


def _starts(best: Optional[dict], baseline: Optional[dict], strategy: str, prune_below: float) -> dict:
    """Starting rates per cell: near the best so far (quick, pruned below it), or the baseline's (grid)."""
    source = best if strategy == "quick" else baseline
    if source is None:
        return {}
    factor = prune_below if strategy == "quick" else 1.0
    return {(c["protocol"], c["payload"]): c["capacity_rps"] * factor for c in source["cells"] if c["capacity_rps"]}


def run_trial(spec, config: dict, index: int, space: tunespace.Space, tune_dir: Path, backend: str, generators,
              starts: dict, prune: bool, log: Callable[[str], None], answers: dict) -> dict:
    """Deploy `config`, measure its capacity per cell, stop it; a deployment or answer failure is a failed trial."""

    started = time.monotonic()
    trial_dir = tune_dir / "trials" / f"{index:02d}"
    try:
        trial_spec = spec.model_copy(update={"serving": apply_config(spec.serving, config)})
    except ValueError as exc:
        return trial_record(index, config, space.baseline, [], False, spec.benchmark.slo, started, trial_dir, [],
                            error=f"not a valid configuration: {exc}")
    runs: list[dict] = []
    results: list[dict] = []
    current = None
    try:
        with session(trial_spec, log, backend, generators, run_dir=trial_dir) as current:
            if not current.started:
                raise SpecError(f"'{spec.name}' was already served when trial {index} began: tune deploys every "
                                "configuration itself; stop the other server (make down) and rerun to resume")
            answers.update(current.answers)
            results, stopped = measure_cells(current, log, starts=starts, prune=prune, runs=runs)
    except SpecError:
        raise
    except HarnessError as exc:
        log(f"trial {index} failed: {exc}")
        return trial_record(index, config, space.baseline, [], False, spec.benchmark.slo, started, trial_dir,
                            [], error=f"{type(exc).__name__}: {exc}")
    stopped = stopped or bool(current.server_died)
    summary = current.summary(runs, generators, len(runs), capacity=results, tune_trial=index)
    reportpage.write(summary, current.run_dir)
    capacitypage.write(results, current.run_dir, spec.benchmark.slo)
    record = trial_record(index, config, space.baseline, results, stopped, spec.benchmark.slo, started,
                          trial_dir, current.cells,
                          error=f"the server stopped: {current.server_died}" if current.server_died else None)
    record["pareto_points"] = [{"protocol": r["protocol"], "payload": r["payload"], "wire": r["wire"],
                                "offered_rps": p["offered_rps"], "achieved_rps": p["achieved_rps"],
                                "slo_ms": p.get(spec.benchmark.slo.key)}
                               for r in results for p in r["probes"] if p["meets_slo"]]
    return record


def tune(spec, log: Callable[[str], None] = print, backend: Optional[str] = None, generators=None) -> int:
    """Search the configurations of `spec`'s tune section; returns the exit code."""

    generators = generators or Generators()
    spec = with_monitoring(open_loop_spec(spec, "tune"), log)
    backend = backend or spec.serving.backend
    settings, slo, options = spec.benchmark, spec.benchmark.slo, spec.tune
    endpoints = deployment_for(spec, backend).endpoints
    if already_serving(endpoints):
        raise SpecError(f"'{spec.name}' is already served at {endpoints.rest_url}: tune deploys every configuration "
                        f"itself on the spec's ports; stop that server first (make down SPEC={spec.origin})")
    cells = [(s.protocol, s.payload) for s in plan([1], settings.protocols, settings.payloads)]
    space = tunespace.derive(spec, cells, backend, log)
    wanted = search_key(spec, cells, space, backend)
    state = _resumable(spec, wanted, log)
    if state is not None and state["trials"] and state["trials"][0]["status"] == "failed":
        state["trials"] = []  # a baseline that could not be measured is measured again, not skipped
    if state is not None:
        tune_dir = Path(state["report_dir"])
        log(f"tune: resuming {tune_dir}: {len(state['trials'])} trials done, {state['elapsed_s'] / 60:.1f} of "
            f"{options.budget / 60:g} minutes of the budget used")
    else:
        tune_dir = new_run_dir(spec, "tune")
        state = {"model": spec.name, "key": wanted, "report_dir": str(tune_dir), "complete": False, "trials": [],
                 "elapsed_s": 0.0, "answers": {}}
        point_latest(tune_dir)
    state.update(slo=slo.model_dump(), slo_text=str(slo), strategy=options.strategy, budget_s=options.budget,
                 backend=backend, cells=[list(c) for c in cells], min_gain=space.min_gain,
                 space={k: list(v) for k, v in space.values.items()}, baseline_config=space.baseline)
    log(f"tune: {options.strategy} search of {len(cells)} cell(s) at {slo} on the {backend} backend, budget "
        f"{options.budget / 60:g} min; writing to {tune_dir}")
    stopped_by = "done"
    while True:
        trials = state["trials"]
        baseline = trials[0] if trials else None
        current_space = (tunespace.sized(space, baseline["cells"], slo.latency_ms)
                         if baseline and baseline["cells"] else space)
        config = tunespace.next_config(current_space, options.strategy, trials)
        if config is None:
            break
        if trials and state["elapsed_s"] + _expected_s(trials) > options.budget:
            stopped_by = "budget"
            log(f"tune: the budget is spent ({state['elapsed_s'] / 60:.1f} of {options.budget / 60:g} min; a trial "
                f"takes about {_expected_s(trials) / 60:.1f} min): stopping after {len(trials)} trials")
            break
        index = len(trials) + 1
        best = tunereport.best_trial(trials, space.min_gain)
        prune = options.strategy == "quick" and index > 1
        log(f"\ntrial {index}: {label(config, space.baseline)}")
        began = time.monotonic()
        record = run_trial(spec, config, index, space, tune_dir, backend, generators,
                           _starts(best, baseline, options.strategy, options.prune_below), prune, log,
                           state["answers"])
        if index == 1 and record["status"] in ("failed", "pruned"):
            state["trials"].append(record)
            _checkpoint(state, tune_dir, spec, space)
            raise SpecError(f"tune: the baseline (the spec's own configuration) could not be measured: "
                            f"{record['error'] or record['status']}; see {record['report_dir']}")
        state["trials"].append(record)
        state["elapsed_s"] += time.monotonic() - began
        log(f"trial {index}: {tunereport.trial_line(record)}")
        _checkpoint(state, tune_dir, spec, space)
    state["complete"] = True
    state["stopped_by"] = stopped_by
    result = _checkpoint(state, tune_dir, spec, space)
    log("\n" + tunereport.terminal(result))
    log(f"\ntune: {tune_dir / 'tune.html'}\n      {tune_dir / TUNE_FILE}")
    record_history(spec, "tune", tune_summary(result, tune_dir), tune_dir, log)
    answers = result.get("answers") or {}
    if answers and not answers.get("informative", True) and not answers.get("accepted"):
        return EXIT_UNINFORMATIVE
    return EXIT_OK if result.best and result.best.get("valid") else EXIT_INVALID


def _expected_s(trials) -> float:
    durations = [t["duration_s"] for t in trials if t.get("duration_s")]
    return sum(durations) / len(durations) if durations else 0.0


def _checkpoint(state: dict, tune_dir: Path, spec, space) -> TuneResult:
    """Write tune.json (and tune.html) from the trials so far; returns what was written."""
    result = tunereport.assemble(state, spec, space)
    tunereport.write(result, tune_dir)
    return result
