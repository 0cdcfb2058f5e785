"""A version swap under open-loop load: while every served model takes a steady rate, a new version of the spec's
model is delivered the way a training pipeline delivers one (copied aside, then renamed into the base path, so the
server's file-system poll finds it whole), and once it answers the old version's directory is removed.

Recorded: every request (openload.Answer: due, sent, answered, correct, which version answered), the markers
(copy started, renamed in, new version AVAILABLE and old version END as GetModelStatus saw them, polled every
STATUS_POLL_S, old directory removed) and the server's own load and warmup figures of the new version. Judged per
model: the spike (buckets whose p99 is over SPIKE_FACTOR x the baseline's), failures, late starts, and for the
swapped model the exact switchover and whether any request sent after the new version answered was answered by the
old one.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from deploy.deployment import deployment_for
from deploy.waiting import version_states
from exporter.export import ensure_exported
from loadtests.measure.coldstart import copy_version, no_warmup_file, server_facts, warmup_records
from loadtests.measure.openload import LATE_RATIO_LIMIT, Answer, OpenLoad, Target, buckets, check_rate, latency_ms
from loadtests.measure.payloadsets import load_or_build, payload_plan
from spec.errors import HarnessError, UsageError
from spec.results import CapacityResult
from spec.units import parse_fraction

STATUS_POLL_S = 0.02
SPIKE_FACTOR = 2.0
SPIKE_FLOOR_MS = 1.0  # a bucket is in the spike only when its p99 is also this much above the baseline's


class StatusWatcher:
    """Polls GetModelStatus of one model; remembers when each version was first seen in each state."""

    def __init__(self, grpc_target: str, model: str, clock: Callable[[], float]):
        import grpc

        self.channel = grpc.insecure_channel(grpc_target)
        self.model, self.clock = model, clock
        self.seen: dict[tuple[int, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import grpc

        while not self._stop.wait(STATUS_POLL_S):
            try:
                states = version_states(self.channel, self.model, timeout=1.0)
            except grpc.RpcError:
                continue
            now = self.clock()
            for version, state in states.items():
                self.seen.setdefault((version, state), now)

    def first(self, version: int, state: str) -> Optional[float]:
        return self.seen.get((version, state))

    def start(self) -> "StatusWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.channel.close()


def stage(version_dir: Path, into: Path) -> Path:
    """The export's version copied to <into>/<model>/<version> (the swap works on a copy, never on the export);
    returns <into>/<model>."""
    model_dir = into / version_dir.parent.name
    copy_version(version_dir, model_dir / version_dir.name)
    return model_dir


def _wait(until: Callable[[], bool], timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if until():
            return True
        time.sleep(step_s)
    return until()


def run_swap(grpc_target: str, rest_url: str, monitoring_path: str, model: str, model_dir: Path, old_name: str,
             targets: Sequence[Target], rate: float, settings, log: Callable[[str], None],
             new_warmup: Optional[bool] = None) -> dict:
    """Load every target at `rate`, deliver the next version of `model` into `model_dir` (its served version is
    the folder `old_name`, e.g. 1 or 00000123), remove the old one; the answers, markers and the new version's
    server figures. `settings`: lifecycle.swap; `new_warmup` False: the new version comes without the warmup
    records."""
    old = int(old_name)
    new = old + 1
    load = OpenLoad(grpc_target, targets, rate).start()
    watcher = StatusWatcher(grpc_target, model, load.now).start()
    markers: dict[str, Optional[float]] = {}
    try:
        time.sleep(settings.baseline)
        incoming = model_dir / f".incoming-{new}"  # not a version directory: the poll ignores it until the rename
        markers["copy"] = load.now()
        copy_version(model_dir / old_name, incoming,
                     ignore=no_warmup_file(model_dir / old_name) if new_warmup is False else None)
        markers["renamed"] = load.now()
        incoming.rename(model_dir / str(new))
        log(f"  swap: version {new} copied in {(markers['renamed'] - markers['copy']) * 1000:.0f} ms and renamed "
            f"into {model_dir}")
        answered = _wait(lambda: any(a.version == new and a.ok for a in list(load.answers)), settings.timeout)
        if answered:
            time.sleep(settings.after)
            markers["removed"] = load.now()
            shutil.rmtree(model_dir / old_name)
            _wait(lambda: watcher.first(old, "END") is not None, 5.0)
            time.sleep(settings.after)
        else:
            log(f"  swap: version {new} did not answer within {settings.timeout:g} s (lifecycle.swap.timeout)")
    finally:
        answers = load.stop()
        watcher.stop()
    markers["available"] = watcher.first(new, "AVAILABLE")
    markers["old_end"] = watcher.first(old, "END")
    markers["end"] = max((a.due for a in answers), default=0.0)
    return {"answers": answers, "markers": markers, "new_version": new, "old_version": old, "late": load.late,
            "sent": load.sent, "server": new_version_facts(rest_url, monitoring_path, model, new)}


def new_version_facts(rest_url: str, monitoring_path: str, model: str, version: int) -> dict:
    """The new version's load time and warmup (ms; None when it ran none) from the server's metrics."""
    facts = server_facts(rest_url, monitoring_path, "", path_suffix=f"/{model}/{version}")
    return {"load_ms": facts["load_ms"], "warmup_ms": facts["warmup_ms"] if facts["warmup_runs"] else None,
            "metrics_error": facts["metrics_error"]}


def verdict(measured: dict, models: Sequence[str], swapped: str, bucket_s: float) -> dict:
    """Per model: baseline, spike, failures, late starts and buckets; for the swapped one, the switchover."""
    answers: list[Answer] = measured["answers"]
    markers = measured["markers"]
    copy_at, end = markers["copy"], markers["end"] + bucket_s
    out = {}
    for model in models:
        mine = [a for a in answers if a.model == model]
        base_p50 = latency_ms(answers, model, 50, high=copy_at)
        base_p99 = latency_ms(answers, model, 99, high=copy_at)
        series = buckets(answers, model, bucket_s, end)
        limit = None if base_p99 is None else max(SPIKE_FACTOR * base_p99, base_p99 + SPIKE_FLOOR_MS)
        hit = [b for b in series if b["t"] + bucket_s > copy_at and limit is not None
               and (b["p99_ms"] is None and b["requests"] > 0 or (b["p99_ms"] or 0) > limit)]
        after = [b["p99_ms"] for b in series if b["t"] + bucket_s > copy_at and b["p99_ms"] is not None]
        failures = [a for a in mine if not a.ok]
        entry = {"model": model, "requests": len(mine), "failures": len(failures),
                 "failure_reasons": sorted({a.error for a in failures})[:5], "late": sum(a.late for a in mine),
                 "baseline_p50_ms": base_p50, "baseline_p99_ms": base_p99, "spike_limit_ms": limit,
                 "peak_p99_ms": max(after) if after else None,
                 "spike_ms": (hit[-1]["t"] + bucket_s - hit[0]["t"]) * 1000.0 if hit else 0.0,
                 "spike_buckets": len(hit), "during_p99_ms": latency_ms(answers, model, 99, copy_at, end),
                 "versions": sorted({a.version for a in mine if a.ok and a.version is not None}), "buckets": series}
        if model == swapped:
            entry.update(switchover(mine, measured["old_version"], measured["new_version"], copy_at))
        out[model] = entry
    return out


def switchover(answers: Sequence[Answer], old: int, new: int, copy_at: float) -> dict:
    """When the new version first answered (due and answered, seconds from the load's start), how long after the
    copy, and how many requests sent after that answer the old version still answered (0 expected)."""
    first_new = min((a for a in answers if a.ok and a.version == new), key=lambda a: a.done, default=None)
    if first_new is None:
        return {"first_new_due_s": None, "first_new_done_s": None, "copy_to_new_answer_s": None,
                "old_after_switch": None, "switches": 0}
    stale = [a for a in answers if a.ok and a.version == old and a.sent > first_new.done]
    ordered = [a.version for a in sorted(answers, key=lambda a: a.sent) if a.ok and a.version in (old, new)]
    return {"first_new_due_s": first_new.due, "first_new_done_s": first_new.done,
            "copy_to_new_answer_s": first_new.done - copy_at, "old_after_switch": len(stale),
            "switches": sum(1 for x, y in zip(ordered, ordered[1:]) if x != y)}


def late_problem(measured: dict) -> Optional[str]:
    """A sentence when the generator could not keep the schedule (the figures then describe it, not the server)."""
    sent = measured["sent"]
    if sent and measured["late"] / sent > LATE_RATIO_LIMIT:
        return (f"{measured['late']} of {sent} requests started late (more than {LATE_RATIO_LIMIT:.0%}): the "
                "generator could not keep the schedule; lower --rate")
    return None


def capacity_rate(spec, share: str, payload: str) -> tuple[float, str]:
    """`share` (e.g. '50%') of the gRPC capacity for `payload` in the newest capacity.json of this model; the rate
    and where it came from. UsageError (one line) when there is none."""
    base = spec.resolve(spec.benchmark.output_dir) / spec.name
    found = sorted(base.glob("*/capacity.json"), key=lambda p: p.stat().st_mtime) if base.is_dir() else []
    for path in reversed(found):
        try:
            cells = CapacityResult.from_dict(json.loads(path.read_text()), str(path)).results
        except (OSError, ValueError, UsageError):  # unreadable, or not a capacity.json this harness wrote
            continue
        for cell in cells:
            if cell.protocol == "grpc" and cell.payload == payload and cell.capacity_rps:
                rate = parse_fraction(share) * cell.capacity_rps
                return rate, f"{share} of {cell.capacity_rps:.1f} req/s (gRPC {payload}, {path})"
    raise UsageError(f"lifecycle.swap.rate {share!r}: no make capacity result for gRPC {payload} of {spec.name} "
                     f"under {base}; run make capacity SPEC={spec.origin} first, or give the rate in requests per "
                     "second (RATE=40)")


def neighbour_targets(spec, payload_names, log: Callable[[str], None]) -> list[Target]:
    """A load target for every model co-served with the spec's (serving.also_serve) that this harness can send
    requests to; a model it cannot (no image input) is said in one line and left unloaded."""
    targets = []
    for other in spec.served[1:]:
        try:
            version_dir = ensure_exported(other, lambda _line: None)
            plan, names = payload_plan(other, version_dir, payload_names)
            payloads, _ = load_or_build(other, version_dir, names, lambda _line: None, plan=plan)
        except HarnessError as exc:
            log(f"  swap: neighbour {other.name} is served but not loaded: {exc}")
            continue
        targets.append(Target(other.name, tuple(payloads.grpc_request(names[0], i, other.name)
                                                for i in range(len(payloads))), payloads))
    return targets


def swap_rate(spec, payload: str) -> tuple[float, str]:
    """lifecycle.swap.rate in requests per second per model, and where it came from; UsageError (one line) when
    it is a share of a capacity make capacity never found, or more than the generator can offer."""
    rate = spec.lifecycle.swap.rate
    if isinstance(rate, str):
        return capacity_rate(spec, rate, payload)
    check_rate(rate, len(spec.served), "lifecycle.swap.rate")
    return float(rate), "lifecycle.swap.rate"


AS_SERVED = "as served"


def check_settings(spec, version_dir: Path) -> None:
    """lifecycle.swap.compare against the export and the swap's timeout, before any server starts: UsageError (one
    line) for a setting that cannot be measured."""
    swap = spec.lifecycle.swap
    for setting in swap.compare:
        if setting.warmup is not None and warmup_records(version_dir) is None:
            raise UsageError(f"lifecycle.swap.compare: {setting.label!r} delivers the new version "
                             f"{'with' if setting.warmup else 'without'} the export's warmup records, but "
                             f"{version_dir} has none, so there is nothing to compare; export with export.warmup: "
                             "true or leave warmup out of the setting")
        poll = setting.file_system_poll_wait_seconds or spec.serving.file_system_poll_wait_seconds
        if poll >= swap.timeout:
            raise UsageError(f"lifecycle.swap.compare: {setting.label!r} polls every {poll} s, but the swap waits "
                             f"only lifecycle.swap.timeout={swap.timeout:g} s for the new version; raise the timeout "
                             "above the poll period")
    if spec.serving.file_system_poll_wait_seconds >= swap.timeout:
        raise UsageError(f"serving.file_system_poll_wait_seconds={spec.serving.file_system_poll_wait_seconds} is not "
                         f"below lifecycle.swap.timeout={swap.timeout:g} s: the swap could end before the server "
                         "looks for the new version; raise the timeout")


def swap_part(spec, backend: str, version_dir: Path, payloads, payload: str, rate: tuple[float, str], run_dir: Path,
              log: Callable[[str], None]) -> dict:
    """The swap with the spec's serving section, then with each setting of lifecycle.swap.compare (each on a fresh
    server); the first's figures, the others under "compared" with the serving flags they changed."""
    result = one_swap(spec, backend, version_dir, payloads, payload, rate, run_dir, log)
    result.update(setting=AS_SERVED, changes={})
    compared = []
    for setting in spec.lifecycle.swap.compare:
        changes = setting.changes()
        log(f"swap, compared: {setting.label}")
        serving = {k: v for k, v in changes.items() if k != "warmup"}
        variant = spec.model_copy(update={"serving": spec.serving.model_copy(update=serving)})  # companions kept
        compared.append({**one_swap(variant, backend, version_dir, payloads, payload, rate, run_dir, log,
                                    new_warmup=changes.get("warmup")),
                         "setting": setting.label, "changes": changes})
    result["compared"] = compared
    return result


def one_swap(spec, backend: str, version_dir: Path, payloads, payload: str, rate: tuple[float, str], run_dir: Path,
             log: Callable[[str], None], new_warmup: Optional[bool] = None) -> dict:
    """The swap at `rate` (swap_rate's) on a staged copy of the export, served (embedded: from the copy; docker:
    the copy mounted over the image's model directory) with every co-served model; the verdict per model."""
    settings = spec.lifecycle.swap
    rate, source = rate
    staging = run_dir / ".swap"
    try:
        model_dir = stage(version_dir, staging)
        served = spec.model_copy(update={"export": spec.export.model_copy(update={"base_path": staging})})
        served._companions = spec.served[1:]
        targets = [Target(spec.name, tuple(payloads.grpc_request(payload, i, spec.name)
                                           for i in range(len(payloads))), payloads)]
        targets += neighbour_targets(spec, spec.benchmark.payloads, log)
        check_rate(rate, len(targets), "lifecycle.swap.rate")
        log(f"swap: {rate:.1f} req/s on each of {', '.join(t.model for t in targets)} ({source}); version "
            f"{int(version_dir.name) + 1} of {spec.name} delivered after {settings.baseline:g} s")
        deployment = deployment_for(served, backend, lambda _line: None)
        deployment.mounts = {spec.name: model_dir}  # docker: the container sees the staged folder, renames included
        with deployment:
            endpoints = deployment.endpoints
            measured = run_swap(endpoints.grpc_target, endpoints.rest_url, spec.serving.monitoring.path, spec.name,
                                model_dir, version_dir.name, targets, rate, settings, log, new_warmup)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    models = verdict(measured, [t.model for t in targets], spec.name, settings.bucket)
    return {"rate_per_model": rate, "rate_source": source, "markers": measured["markers"],
            "old_version": measured["old_version"], "new_version": measured["new_version"],
            "new_version_server": measured["server"], "late_problem": late_problem(measured),
            "bucket_s": settings.bucket, "models": models}
