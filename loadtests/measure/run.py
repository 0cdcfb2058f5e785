"""The sweep: one headless Locust process per (protocol, payload, users) step, and its measured numbers.

Locust monkey-patches on import, so it never runs in this process: each step is
`python -m locust -f loadtests/locustfile.py --headless ...`, which writes every sample of its
measured window to an .npz (full-resolution latencies) plus Locust's own CSV and HTML.
With workers, that process is a Locust master (it measures the window and merges the samples) and
each worker is one more `locust --worker` process on this machine, or on another one
(`python -m loadtests worker`, see docs/guides/distributed.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from loadtests.analyze import validity
from loadtests.analyze.machine import machine_fields
from loadtests.analyze.validity import GENERATOR_BOUND_PERCENT
from loadtests.drive import servermetrics
from loadtests.drive.payloads import cells, wire_name
from loadtests.drive.recorder import SpeedProbe
from server.process import free_port, stop_child
from spec.errors import HarnessError

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"
REPO = LOCUSTFILE.parents[1]
USER_CLASS = {"rest": "RestUser", "grpc": "GrpcUser"}
PROTOCOL_LABEL = {"rest": "REST", "grpc": "gRPC"}
MAX_DURATION_FACTOR = 3.0  # benchmark.max_duration's default, in durations (see spec/schema.py)
STARTUP_ALLOWANCE_S = 90.0  # Locust + gRPC stubs (which import TensorFlow) before the first user spawns


class StepError(HarnessError):
    """A Locust step did not produce measurements; the message carries its last output lines."""


@dataclass(frozen=True)
class Step:
    """One run: closed loop with `users` users, or open loop at `rate` requests per second."""
    protocol: str
    payload: str
    users: Optional[int] = None
    rate: Optional[float] = None
    tag: str = ""  # tells apart repeated runs of one level (capacity probes)

    def __post_init__(self) -> None:
        if (self.users is None) == (self.rate is None):
            raise ValueError("a step has either users (closed loop) or a rate (open loop)")

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"

    @property
    def level(self) -> float:
        return self.users if self.rate is None else self.rate

    @property
    def slug(self) -> str:
        level = f"u{self.users}" if self.rate is None else f"r{self.rate:.4g}"
        return f"{self.protocol}-{wire_name(self.protocol, self.payload)}-{level}" + (f"-{self.tag}" if self.tag else "")

    @property
    def label(self) -> str:
        level = f"users={self.users}" if self.rate is None else f"rate={self.rate:.4g}/s"
        return f"{PROTOCOL_LABEL[self.protocol]:4} {wire_name(self.protocol, self.payload):15} {level}"


@dataclass(frozen=True)
class Target:
    """What the Locust processes send to and how long they measure."""
    model: str
    rest_url: str
    grpc_target: str
    payload_file: Path
    warmup_s: float
    duration_s: float             # measured at least; then a third at a time until the last three thirds agree
    spawn_rate: float
    max_duration_s: Optional[float] = None  # ... up to this (None: MAX_DURATION_FACTOR x duration_s)
    stability_percent: float = 10.0
    judged_percentile: float = 50.0
    server_pid: Optional[int] = None
    metrics_url: Optional[str] = None  # the server's Prometheus page, scraped around each window
    workers: int = 0              # local `locust --worker` processes; 0 with no remote ones: one plain process
    remote_workers: int = 0       # workers started elsewhere (python -m loadtests worker) the master waits for
    master_bind: str = "127.0.0.1"
    master_port: int = 0          # 0: a free port per step (only local workers)
    grpc_client: str = "lean"     # GrpcUser's client: lean (loadtests/drive/leangrpc.py) or grpcio
    # open loop (steps with a rate)
    arrival: str = "poisson"
    seed: int = 0
    max_in_flight: int = 1000
    late_tolerance_ms: float = 5.0
    drain_s: float = 10.0
    # a capacity probe's SLO (percentile, ms): an unsettled run stops once each of its last sub-windows is over it
    fail_over: Optional[tuple[float, float]] = None
    # trace the server over the measured window into this folder (bench/capacity --profile)
    profile_dir: Optional[Path] = None

    @property
    def longest_s(self) -> float:
        """The most a run measures (benchmark.max_duration)."""
        return max(self.duration_s, self.max_duration_s if self.max_duration_s is not None
                   else MAX_DURATION_FACTOR * self.duration_s)

    @property
    def distributed(self) -> bool:
        return self.workers + self.remote_workers > 0

    @property
    def processes(self) -> int:
        """Load-generating processes per step (an open-loop schedule is split over them)."""
        return self.workers + self.remote_workers if self.distributed else 1


def plan(users: Sequence[int], protocols: Sequence[str], payloads: Sequence[str],
         rates: Optional[Sequence[float]] = None) -> list[Step]:
    """Every step of the sweep: by level (users, or rates in open loop), then payload, protocols alternating."""
    if rates is not None:
        return [Step(protocol, payload, rate=rate) for rate in rates for protocol, payload in cells(protocols, payloads)]
    return [Step(protocol, payload, users=level) for level in users for protocol, payload in cells(protocols, payloads)]


def locust_command(step: Step, target: Target, out_dir: Path, master_port: Optional[int] = None) -> list[str]:
    """The headless Locust command line for one step (a master when the target has workers)."""
    users = step.users if step.rate is None else target.processes  # open loop: one schedule driver per process
    spawn_s = users / target.spawn_rate
    drain_s = target.drain_s if step.rate is not None else 0.0
    run_time = math.ceil(spawn_s + target.warmup_s + target.longest_s * 1.5 + drain_s + 30)  # a backstop
    prefix = out_dir / "locust" / step.slug
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--users", str(users), "--spawn-rate", str(max(target.spawn_rate, users)), "--run-time", f"{run_time}s",
               "--stop-timeout", "10", "--exit-code-on-error", "0", "--loglevel", "WARNING",
               "--csv", str(prefix), "--html", f"{prefix}.html",
               "--model-name", target.model, "--rest-url", target.rest_url, "--grpc-target", target.grpc_target,
               "--payload", step.payload, "--payload-file", str(target.payload_file), "--grpc-client", target.grpc_client,
               "--samples-out", str(out_dir / "samples" / f"{step.slug}.npz"),
               "--measure", f"{target.warmup_s:g},{target.duration_s:g},{target.longest_s:g}",
               "--stability", f"{target.stability_percent:g},{target.judged_percentile:g}"]
    if step.rate is not None:
        command += ["--rate", f"{step.rate:g}", "--arrival", target.arrival, "--seed", str(target.seed),
                    "--max-in-flight", str(target.max_in_flight), "--late-tolerance-ms", f"{target.late_tolerance_ms:g}",
                    "--drain", f"{target.drain_s:g}"]
        if target.fail_over:
            command += ["--fail-over", ",".join(f"{v:g}" for v in target.fail_over)]
    if target.distributed:
        command += ["--master", "--master-bind-host", target.master_bind,
                    "--master-bind-port", str(master_port or target.master_port),
                    "--expect-workers", str(target.workers + target.remote_workers),
                    "--expect-workers-max-wait", str(int(STARTUP_ALLOWANCE_S))]
    if target.server_pid:
        command += ["--server-pid", str(target.server_pid)]
    if target.metrics_url:
        command += ["--metrics-url", target.metrics_url]
    if target.profile_dir is not None:
        command += ["--profile-into", str(target.profile_dir)]
    return command + [USER_CLASS[step.protocol]]


def worker_command(master_host: str, master_port: int, user_classes: Sequence[str] = ()) -> list[str]:
    """One Locust worker: it gets the payloads, the window and the endpoints from its master."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", master_host,
            "--master-port", str(master_port), "--loglevel", "WARNING", *user_classes]


def run_step(step: Step, target: Target, out_dir: Path) -> Path:
    """Run one step's Locust process(es); returns its samples file. Raises StepError if it measured nothing."""
    (out_dir / "locust").mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "locust" / f"{step.slug}.log"
    samples = out_dir / "samples" / f"{step.slug}.npz"
    drain_s = target.drain_s if step.rate is not None else 0.0
    timeout = (STARTUP_ALLOWANCE_S + (step.users or 1) / target.spawn_rate + target.warmup_s
               + target.longest_s * 1.5 + drain_s + 60)
    port = (target.master_port or free_port(target.master_bind)) if target.distributed else None
    workers: list[subprocess.Popen] = []
    with open(log_path, "wb") as log:
        master = subprocess.Popen(locust_command(step, target, out_dir, port), cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        interrupted = True  # until the step ends by itself: Ctrl-C (or any error) stops its processes at once
        try:
            for number in range(target.workers):
                with open(out_dir / "locust" / f"{step.slug}.worker{number + 1}.log", "wb") as worker_log:
                    workers.append(subprocess.Popen(worker_command("127.0.0.1", port, [USER_CLASS[step.protocol]]),
                                                    cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL))
            try:
                code = master.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = f"killed after {timeout:.0f}s"
            interrupted = False
        finally:
            for process in [master, *workers]:  # workers quit with their master; none outlives the step
                _stop(process, grace_s=0.0 if interrupted else 15.0)
    if not samples.exists():
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-12:])
        raise StepError(f"Locust step {step.slug} exited ({code}) without measurements; its log is {log_path}:\n{tail}")
    return samples


def _stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Wait `grace_s` for a process to end by itself (a worker quits with its master), then SIGTERM, then SIGKILL."""
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        stop_child(process, timeout=5)


def measure(step: Step, samples_path: Path, request_bytes: Sequence[int], sizes: Sequence[tuple[int, int]],
            rules: validity.Rules = validity.Rules(), server_stopped: Optional[str] = None, model: str = "") -> dict:
    """One summary entry from a step's samples: percentiles from every sample, not Locust's buckets.

    Closed loop, the window holds the requests completing in it. Open loop, it holds the requests *due* in it
    (each answered, or failed after the drain), their latency runs from the due time, and `service_*` from the
    actual send; throughput counts successful completions inside the window either way.
    """
    with np.load(samples_path) as data:
        t, latency, ok, image = data["t"], data["latency_ms"], data["ok"], data["image"]
        due, service, late = data["due"], data["service_ms"], data["late"]
        meta = json.loads(data["meta"].tobytes())
    open_loop = meta.get("mode") == "open"
    window = meta["window_s"] or float("nan")
    done_inside = (t >= 0) & (t <= window)
    inside = ((due >= 0) & (due < window)) if open_loop else done_inside
    latency_in, ok_in = latency[inside], ok[inside]
    good = latency_in[ok_in]
    wanted = sorted(set(validity.STANDARD_PERCENTILES) | {rules.judged_percentile})
    pct = dict(zip(wanted, np.percentile(good, wanted) if good.size else [float("nan")] * len(wanted)))
    good_service = service[inside & ok]
    service_pct = (np.percentile(good_service, validity.STANDARD_PERCENTILES) if good_service.size
                   else [float("nan")] * 4)
    known = image[inside & (image >= 0) & (image < len(request_bytes))]
    per_image = []
    for i in range(len(request_bytes)):
        mine = latency[inside & ok & (image == i)]
        if mine.size:
            per_image.append({"image": i, "width": sizes[i][0], "height": sizes[i][1],
                              "request_bytes": int(request_bytes[i]), "requests": int(mine.size),
                              "p50_ms": float(np.percentile(mine, 50))})
    cpu = meta["generator_cpu_percent"]
    requests = int(inside.sum())
    entry = {
        "protocol": step.protocol, "payload": step.payload, "wire": wire_name(step.protocol, step.payload),
        "mode": step.mode, "users": step.users, "offered_rps": step.rate, "level": step.level,
        "arrival": meta.get("arrival"), "requests": requests, "failures": int((~ok_in).sum()),
        "failure_ratio": float((~ok_in).mean()) if requests else 0.0, "failure_reasons": meta["failures"],
        "window_s": window, "rps": float((ok & done_inside).sum() / window) if latency.size else 0.0,
        **{validity.pkey(q): float(v) for q, v in pct.items()},
        "max_ms": float(good.max()) if good.size else float("nan"),
        "mean_ms": float(good.mean()) if good.size else float("nan"),
        "service_mean_ms": float(good_service.mean()) if good_service.size else float("nan"),
        **{f"service_{validity.pkey(q)}": float(v) for q, v in zip(validity.STANDARD_PERCENTILES, service_pct)},
        "late_ratio": float(late[inside].mean()) if open_loop and requests else None,
        "late_tolerance_ms": meta.get("late_tolerance_ms"),
        "percentiles_supported": {validity.pkey(q)[:-3]: validity.supported(good.size, q, rules.min_tail_samples)
                                  for q in wanted},
        "littles_law": validity.littles_law(meta.get("in_flight_mean"), t, latency, window),
        "bytes_per_request": float(np.mean([request_bytes[i] for i in known])) if known.size
        else float(np.mean(request_bytes)),
        "generator_cpu_percent": cpu, "generator_bound": bool(cpu is not None and cpu > GENERATOR_BOUND_PERCENT),
        "generator_processes": meta.get("generator_processes", 1),
        "server_cpu_percent": meta["server_cpu_percent"], **machine_fields(meta), "by_image": per_image,
        "samples_file": str(samples_path.name), "locust_csv": f"locust/{step.slug}_stats.csv",
        "locust_html": f"locust/{step.slug}.html",
    }
    entry.update(settling_fields(meta.get("settled") or {}, window))
    if meta.get("profile"):  # the server's trace of this window (--profile): its path relative to the run's folder
        profile, run_dir = dict(meta["profile"]), samples_path.resolve().parents[1]
        if profile["file"] and Path(profile["file"]).is_relative_to(run_dir):
            profile["file"] = str(Path(profile["file"]).relative_to(run_dir))
        entry["profile"] = profile
    entry.update(bound_fields(good, rules))
    key_t = due if open_loop else t
    entry["sub_windows"] = validity.judged_parts(meta.get("settled") or {}, t, key_t, ok, latency, window,
                                                 rules.judged_percentile, due=due if open_loop else None)
    entry["invalid_reasons"] = validity.judge(entry, entry["sub_windows"], rules, server_stopped)
    entry["valid"] = not entry["invalid_reasons"]
    if not meta.get("settled"):  # not timed by sub-windows (a samples file from before they were): judged now
        entry["stable"] = not any(r.startswith("unstable:") for r in entry["invalid_reasons"])
    entry["server"] = servermetrics.server_block(meta.get("server_metrics"), model, step.protocol)
    entry["server"]["client_requests"] = int((ok & done_inside).sum())
    entry["breakdown"] = servermetrics.breakdown(entry)
    entry.update(servermetrics.cpu_per_request(entry, meta))
    return entry



def settling_fields(settled: dict, window_s: float) -> dict:
    """How long a run measured and which of its sub-windows its figures come from (summary.json fields)."""
    if not settled:
        width = window_s / validity.SUB_WINDOWS if window_s and math.isfinite(window_s) else None
        return {"measured_s": window_s, "measured_total_s": window_s, "sub_window_s": width,
                "windows_total": validity.SUB_WINDOWS, "windows_used": validity.SUB_WINDOWS, "windows_grouped": 1,
                "stable": None,
                "extended_s": 0.0, "duration_s": window_s, "max_duration_s": None, "over_slo": False}
    width = settled["sub_window_s"]
    total = settled["windows_total"] * width
    return {"measured_s": window_s, "measured_total_s": total, "sub_window_s": width,
            "windows_total": settled["windows_total"], "windows_used": settled["windows_used"],
            "windows_grouped": int(settled.get("windows_grouped", 1)),
            "stable": bool(settled["stable"]), "extended_s": max(0.0, total - settled["duration_s"]),
            "duration_s": settled["duration_s"], "max_duration_s": settled["max_duration_s"],
            "over_slo": bool(settled.get("over_slo"))}


def bound_fields(good: np.ndarray, rules: validity.Rules) -> dict:
    """Upper confidence bounds (at rules.confidence) of the standard percentiles and of the judged one
    (`p99_ms_upper`, ...), from the order statistics; `upper_bound` says which is judged, or why there is none."""
    q, level = rules.bound_percentile, rules.confidence
    name = validity.pkey(q) + "_upper"
    fields = {validity.pkey(p) + "_upper": validity.upper_bound(good, p, level)
              for p in sorted(set(validity.STANDARD_PERCENTILES) | {q})}
    bound = fields[name]
    fields["upper_bound"] = {"field": name, "percentile": q, "confidence": level, "samples": int(good.size),
                             "value_ms": bound}
    if bound is None:
        fields["upper_bound"]["reason"] = (
            f"too few answers for a {level:.0%} bound on p{q:g}: {good.size} measured, "
            f"{validity.bound_samples(q, level)} needed")
    return fields


def describe(entry: dict) -> str:
    """One progress line for a measured run."""
    late = f"  late {entry['late_ratio']:.1%}" if entry["late_ratio"] is not None else ""
    service = f" (service p50 {entry['service_p50_ms']:.2f})" if entry["mode"] == "open" else ""
    line = (f"        {entry['rps']:8.1f} req/s  p50 {entry['p50_ms']:7.2f} ms{service}  p99 {entry['p99_ms']:7.2f} ms  "
            f"failures {entry['failures']}/{entry['requests']}{late}  generator CPU "
            f"{entry['generator_cpu_percent'] or 0:.0f}%")
    line += settling_note(entry)
    if not entry["valid"]:
        line += "\n        INVALID: " + "; ".join(entry["invalid_reasons"])
    if entry.get("shared_machine"):
        line += "\n        shared machine: " + "; ".join(entry["shared_machine"])
    return line


def settling_note(entry: dict) -> str:
    """'' for a run that settled in its duration; else how far it was extended and where its figures come from."""
    if not entry.get("extended_s"):
        return ""
    total, used = entry["measured_total_s"], entry["measured_s"]
    how = "settled" if entry.get("stable") else "did not settle"
    return (f"\n        extended {entry['duration_s']:g} s -> {total:.0f} s ({entry['windows_total']} sub-windows of "
            f"{entry['sub_window_s']:.1f} s): {how}{_grouped(entry)}; figures from the last {entry['windows_used']} "
            f"({used:.1f} s)")


def _grouped(entry: dict) -> str:
    group = entry.get("windows_grouped") or 1
    return "" if group == 1 else f" in parts of {group} sub-windows ({group * entry['sub_window_s']:.1f} s)"


def run_and_measure(step: Step, target: Target, out_dir: Path, request_bytes: dict, sizes,
                    rules: validity.Rules, server_gone: Callable[[], Optional[str]] = lambda: None) -> dict:
    """Run one step and judge it; a server that stopped during it makes it invalid. The machine's speed is timed
    while it runs (SpeedProbe): `machine_probe_ms`, which make compare holds against the same cell's in the other
    bench."""
    with SpeedProbe() as probe:
        samples = run_step(step, target, out_dir)
    entry = measure(step, samples, request_bytes[(step.protocol, step.payload)], sizes, rules, server_gone(),
                    model=target.model)
    entry["machine_probe_ms"] = probe.median_ms
    return entry


def sweep(steps: Sequence[Step], target: Target, out_dir: Path, request_bytes: dict, sizes,
          log: Callable[[str], None] = print, server_gone: Callable[[], Optional[str]] = lambda: None,
          rules: validity.Rules = validity.Rules(), profile_dir: Optional[Path] = None) -> list[dict]:
    """Run every step in order, printing progress; returns one summary entry per step.

    After each step `server_gone()` is asked why the server is not running (None: it is): a dead server ends the
    sweep there, since every further run would only measure connection errors. With `profile_dir`, the server is
    traced over the first run's window into it.
    """
    results = []
    for number, step in enumerate(steps, 1):
        traced = profile_dir is not None and number == 1
        log(f"[{number}/{len(steps)}] {step.label}: warm-up {target.warmup_s:g}s, measuring {target.duration_s:g}s"
            + (f" (up to {target.longest_s:g}s until it settles)" if target.longest_s > target.duration_s else "")
            + (", the server traced" if traced else ""))
        entry = run_and_measure(step, dataclasses.replace(target, profile_dir=profile_dir) if traced else target,
                                out_dir, request_bytes, sizes, rules, server_gone)
        log(describe(entry))
        results.append(entry)
        gone = server_gone()
        if gone:
            log(f"the server stopped during run {number} ({gone}); the remaining {len(steps) - number} runs are "
                "skipped")
            break
    return results
