"""Memory and density: 1, 2, ... k copies of the spec's model served by one server (separate model names through
its model config), each step a fresh server: its memory once every copy is loaded, again once every copy is warmed
up, and at the peak of a steady open-loop rate spread over the copies, and the SLO percentile at that rate. How many
copies fit under a memory limit while the SLO holds, and what one more copy costs (after load, after warmup, under
load) against the SavedModel's size on disk.

To tell load from warmup, each step's server starts without its own warmup (--enable_model_warmup=false): AVAILABLE
is then "loaded". The step then sends every copy the export's warmup records itself, over gRPC, as the server would
have replayed them (one ordinary request when the export has none), and reads the memory again."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from deploy.deployment import deployment_for
from loadtests.drive import wire
from loadtests.measure.coldstart import MIB, MemoryPeak, addressed, copy_version, warmup_predict_requests
from loadtests.measure.openload import OpenLoad, Target, latency_ms


def disk_mb(directory: Path) -> float:
    """The size of every file under `directory`, in MiB."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file()) / MIB


def copy_name(model: str, k: int) -> str:
    """The k-th copy's model name (the first is the model itself)."""
    return model if k == 1 else f"{model}_copy{k}"


def copies_spec(spec, version_dir: Path, k: int, staging: Path):
    """The spec serving k copies: <staging>/<name>/<version> and <staging>/<name>_copy<i>/<version>, each a model
    of one server's model config (the first k-1 already staged by earlier steps are reused)."""
    for i in range(1, k + 1):
        target = staging / copy_name(spec.name, i) / version_dir.name
        if not target.exists():
            copy_version(version_dir, target)
    export = spec.export.model_copy(update={"base_path": staging})
    main = spec.model_copy(update={"export": export})
    main._companions = tuple(main.model_copy(update={"name": copy_name(spec.name, i)}) for i in range(2, k + 1))
    return main


def warm_up(grpc_target: str, requests: dict[str, Sequence], timeout_s: float = 60.0) -> list[str]:
    """Send each model its warmup requests, one at a time; the failures, as '<model>: <code>: <details>'."""
    import grpc

    failures = []
    with grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        predict = wire.predict_method(channel)
        for model, batch in requests.items():
            for request in batch:
                try:
                    predict(request, timeout=timeout_s)
                except grpc.RpcError as exc:
                    failures.append(f"{model}: {exc.code().name}: {exc.details()}")
    return failures


def run_density(spec, backend: str, version_dir: Path, payloads, payload: str, run_dir: Path,
                log: Callable[[str], None]) -> dict:
    """Every step of lifecycle.density, until max_models or the memory limit; the steps and the answer."""
    settings = spec.lifecycle.density
    warmup = warmup_predict_requests(version_dir, spec.name)  # read once, addressed to each copy below
    records = bool(warmup)
    unwarmed = spec.model_copy(update={"export": spec.export.model_copy(update={"warmup": False})})
    slo = spec.benchmark.slo
    percentile = slo.percentile if slo else 99.0
    staging = run_dir / ".density"
    steps: list[dict] = []
    log(f"density: 1 to {settings.max_models} copies of {spec.name} in one server, {settings.rate:g} req/s spread "
        f"over them for {settings.duration:g} s each"
        + (f", up to {settings.memory_limit:.0f} MiB" if settings.memory_limit else "")
        + ("; each copy warmed up with the export's warmup records" if records else
           "; each copy warmed up with one request (the export has no warmup records)"))
    try:
        for k in range(1, settings.max_models + 1):
            step_spec = copies_spec(unwarmed, version_dir, k, staging)
            names = [copy_name(spec.name, i) for i in range(1, k + 1)]
            targets = [Target(name, tuple(payloads.grpc_request(payload, i, name) for i in range(len(payloads))),
                              payloads) for name in names]
            warmups = {name: [addressed(request, name) for request in warmup] or [target.requests[0]]
                       for name, target in zip(names, targets)}
            started = time.perf_counter()
            with deployment_for(step_spec, backend, lambda _line: None) as deployment:
                ready_s = time.perf_counter() - started
                available = deployment.memory_bytes()
                warm_failures = warm_up(deployment.endpoints.grpc_target, warmups)
                warm = deployment.memory_bytes()
                with MemoryPeak(deployment) as peak:
                    load = OpenLoad(deployment.endpoints.grpc_target, targets, settings.rate / k).start()
                    time.sleep(settings.duration)
                    answers = load.stop()
            step = {"models": k, "ready_s": ready_s,
                    "memory_available_mb": None if available is None else available / MIB,
                    "memory_warm_mb": None if warm is None else warm / MIB,
                    "memory_peak_mb": None if peak.peak is None else peak.peak / MIB,
                    "warmup_requests": sum(map(len, warmups.values())), "warmup_failures": warm_failures[:5],
                    "requests": len(answers), "failures": sum(not a.ok for a in answers),
                    "late": load.late, "p50_ms": latency_ms(answers, None, 50), "p99_ms": latency_ms(answers, None, 99),
                    "slo_percentile_ms": latency_ms(answers, None, percentile), "slo_ms": slo.latency_ms if slo else None}
            step["slo_met"] = None if slo is None or step["slo_percentile_ms"] is None else \
                bool(step["slo_percentile_ms"] <= slo.latency_ms)
            steps.append(step)
            log(f"  {k} cop{'y' if k == 1 else 'ies'}: ready in {ready_s:.1f} s, memory "
                f"{_text(step['memory_available_mb'])} MiB loaded, {_text(step['memory_warm_mb'])} MiB warmed up, "
                f"{_text(step['memory_peak_mb'])} MiB under load; p{percentile:g} "
                f"{_text(step['slo_percentile_ms'], 1)} ms, {step['failures']} failures"
                + (f"; warmup failed: {warm_failures[0]}" if warm_failures else ""))
            if settings.memory_limit and (step["memory_peak_mb"] or 0) > settings.memory_limit:
                log(f"  over the memory limit ({settings.memory_limit:.0f} MiB): no more copies")
                break
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return answer(steps, settings.memory_limit, disk_mb(version_dir), percentile)


def _text(value: Optional[float], digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def per_copy_mb(steps: list[dict], key: str) -> Optional[float]:
    """What one more copy costs (MiB): the slope of `key` against the number of copies (least squares)."""
    points = [(s["models"], s[key]) for s in steps if s.get(key) is not None]
    if len(points) < 2:
        return None
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0])


def answer(steps: list[dict], memory_limit: Optional[float], disk: float, percentile: float) -> dict:
    """How many copies fit: the most copies whose memory stayed under the limit, whose SLO held and that had no
    failed request (every step up to it too); what one more copy costs; the SavedModel on disk."""
    fits = 0
    for step in steps:
        ok = step["failures"] == 0 and not step.get("warmup_failures") and step["slo_met"] is not False and not (
            memory_limit and (step["memory_peak_mb"] is None or step["memory_peak_mb"] > memory_limit))
        if not ok:
            break
        fits = step["models"]
    return {"steps": steps, "fits": fits, "memory_limit_mb": memory_limit, "percentile": percentile,
            "per_copy_available_mb": per_copy_mb(steps, "memory_available_mb"),
            "per_copy_warm_mb": per_copy_mb(steps, "memory_warm_mb"),
            "per_copy_peak_mb": per_copy_mb(steps, "memory_peak_mb"), "saved_model_mb": disk,
            "limited_by": next((why for step in steps for why in _why(step, memory_limit)), None)}


def _why(step: dict, memory_limit: Optional[float]) -> list[str]:
    reasons = []
    if memory_limit and step["memory_peak_mb"] is not None and step["memory_peak_mb"] > memory_limit:
        reasons.append(f"memory: {step['models']} copies held {step['memory_peak_mb']:.0f} MiB, over the "
                       f"{memory_limit:.0f} MiB limit")
    if step["slo_met"] is False:
        reasons.append(f"the SLO: {step['models']} copies missed it")
    if step.get("warmup_failures"):
        reasons.append(f"failures: warming up {step['models']} copies failed ({step['warmup_failures'][0]})")
    if step["failures"]:
        reasons.append(f"failures: {step['failures']} requests failed with {step['models']} copies")
    return reasons
