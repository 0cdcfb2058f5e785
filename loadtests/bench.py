"""`make bench`: export if needed, deploy (unless already up), check correctness, sweep, report, tear down."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from spec.errors import SpecError
from spec.schema import BenchmarkSpec, Spec

EXIT_OK, EXIT_FAILURES = 0, 1  # user errors (2), mismatches (3) and Ctrl-C (130): spec.errors
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides of the spec's benchmark section (None keeps the spec's value)."""
    users: Optional[str] = None
    duration: Optional[str] = None
    warmup: Optional[str] = None
    protocols: Optional[str] = None
    payloads: Optional[str] = None
    output_dir: Optional[str] = None


@dataclass(frozen=True)
class Generators:
    """Where the load comes from: one Locust process (the default), or a master and workers."""
    workers: int = 0
    remote_workers: int = 0
    master_bind: str = "127.0.0.1"
    master_port: int = 0
    target_host: Optional[str] = None  # the server's address as the workers must reach it

    def check(self) -> None:
        if self.workers < 0 or self.remote_workers < 0:
            raise SpecError(f"WORKERS / REMOTE_WORKERS must be 0 or more (got {self.workers} / {self.remote_workers})")
        if self.remote_workers and not self.master_port:
            raise SpecError("REMOTE_WORKERS needs a fixed MASTER_PORT (e.g. 5557) that the remote workers connect to")

    def endpoints(self, rest_url: str, grpc_target: str) -> tuple[str, str]:
        """The deployment's endpoints with the host replaced by target_host, when given."""
        if not self.target_host:
            return rest_url, grpc_target
        rest_port = rest_url.rsplit(":", 1)[1]
        grpc_port = grpc_target.rsplit(":", 1)[1]
        return f"http://{self.target_host}:{rest_port}", f"{self.target_host}:{grpc_port}"


def apply_overrides(spec: Spec, overrides: Overrides) -> Spec:
    """The spec with its benchmark section overridden, validated by the same rules as the file."""
    from pydantic import ValidationError

    values = spec.benchmark.model_dump()
    changed = {}
    for key in ("users", "protocols", "payloads"):
        raw = getattr(overrides, key)
        if raw is not None:
            items = [item.strip() for item in raw.split(",") if item.strip()]
            changed[key] = [int(i) if key == "users" and i.lstrip("-").isdigit() else i for i in items]
    for key in ("duration", "warmup", "output_dir"):
        if getattr(overrides, key) is not None:
            changed[key] = getattr(overrides, key)
    if not changed:
        return spec
    try:
        benchmark = BenchmarkSpec.model_validate({**values, **changed})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][:1]))}={changed.get(e['loc'][0])!r}: {e['msg']}"
                             for e in exc.errors())
        raise SpecError(f"command-line override: {problems}") from None
    if overrides.output_dir is not None:  # relative to where the command runs, not to the spec
        benchmark = benchmark.model_copy(update={"output_dir": Path(overrides.output_dir).resolve()})
    return spec.model_copy(update={"benchmark": benchmark})


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+uncommitted changes" if dirty else "")) if commit else "unknown"


def _signature_hash(version_dir: Path) -> str:
    """sha256 of the serving MetaGraph's signature map: equal hashes mean clients see the same API."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    digest = hashlib.sha256()
    for meta_graph in saved.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            for name in sorted(meta_graph.signature_def):
                digest.update(name.encode())
                digest.update(meta_graph.signature_def[name].SerializeToString(deterministic=True))
    return digest.hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(spec: Spec, version_dir: Path, deployment, reused: bool) -> dict:
    """Everything needed to say what was measured, where and with what."""
    from importlib.metadata import version

    image = deployment.image  # (for docker, also learns the serving version of a container found running)
    serving_version = getattr(deployment, "serving_version", None)
    if serving_version is None and deployment.backend == "embedded":
        from server.version import SERVER_VERSION
        serving_version = SERVER_VERSION
    return {
        "spec": str(spec.origin), "spec_sha256": spec.sha256, "model": spec.name,
        "model_version_dir": str(version_dir), "model_signature_sha256": _signature_hash(version_dir),
        "tensorflow": version("tensorflow"), "serving_version": serving_version, "image": image,
        "backend": deployment.backend, "server_started_by_bench": not reused,
        "batching": spec.serving.batching.enabled, "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(),
        "python": platform.python_version(), "locust": version("locust"), "grpcio": version("grpcio"),
        "git_commit": _git_commit(), "host": platform.node(),
        **deployment.server_identity,  # server (TF Serving or ours), base_image and its id: what really served
    }


def _run_dir(spec: Spec) -> Path:
    base = spec.resolve(spec.benchmark.output_dir) / spec.name
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = base / stamp
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def _point_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    temporary = run_dir.parent / f".latest-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, latest)


def bench(spec: Spec, log: Callable[[str], None] = print, backend: Optional[str] = None,
          generators: Generators = Generators()) -> int:
    """Run the whole benchmark for `spec`; returns the process exit code (see EXIT_*)."""
    from deploy.deployment import bring_up, deployment_for
    from deploy.waiting import rest_status
    from exporter.export import ensure_exported
    from loadtests import correctness, report, run
    from loadtests.payloads import load_or_build, request_bytes

    settings = spec.benchmark
    version_dir = ensure_exported(spec, log)
    deployment = deployment_for(spec, backend)
    started = bring_up(spec, deployment, log)
    try:
        payloads, payload_file = load_or_build(spec, version_dir, settings.payloads, log)
        endpoints = deployment.endpoints
        runs = [(s.protocol, s.payload) for s in run.plan(settings.users[:1], settings.protocols, settings.payloads)]
        log(f"correctness: {len(payloads)} images x {len(runs)} protocol/payload pairs against the in-process answer")
        checked = correctness.check(payloads, endpoints.rest_url, endpoints.grpc_target, spec.name, runs)
        worst = max(c["max_abs_diff"] for c in checked)
        log(f"correctness: top-1 equal everywhere, largest score difference {worst:.2e}")
        steps = run.plan(settings.users, settings.protocols, settings.payloads)
        per_request = {cell: request_bytes(payloads, cell[0], cell[1], spec.name) for cell in runs}
        run_dir = _run_dir(spec)
        rest_url, grpc_target = generators.endpoints(endpoints.rest_url, endpoints.grpc_target)
        target = run.Target(model=spec.name, rest_url=rest_url, grpc_target=grpc_target,
                            payload_file=payload_file, warmup_s=settings.warmup, duration_s=settings.duration,
                            spawn_rate=settings.spawn_rate, server_pid=getattr(deployment, "server_pid", None),
                            workers=generators.workers, remote_workers=generators.remote_workers,
                            master_bind=generators.master_bind, master_port=generators.master_port)
        if target.distributed:
            log(f"load generators: a Locust master on {target.master_bind}:{target.master_port or '<free port>'} "
                f"with {generators.workers} local and {generators.remote_workers} remote workers per run")
            if generators.remote_workers and target.master_bind in ("127.0.0.1", "localhost"):
                log("  note: the master listens on loopback, so only workers on this machine can join "
                    "(MASTER_BIND sets the address; TARGET_HOST the server's address as the workers see it)")
        total = len(steps) * (settings.warmup + settings.duration + 8)
        log(f"sweep: {len(steps)} runs (users {list(settings.users)}), about {total / 60:.1f} minutes; "
            f"writing to {run_dir}")
        def server_gone() -> Optional[str]:
            """Why the model is no longer served (None while it is AVAILABLE)."""
            status = rest_status(endpoints)
            return None if status == "AVAILABLE" else (deployment.alive() or f"{endpoints.status_url}: {status}")

        results = run.sweep(steps, target, run_dir, per_request, payloads.sizes, log, server_gone=server_gone)
        server_died = server_gone()
        server_log = deployment.logs() if server_died else ""
    finally:
        if started:
            log(f"stopping the {deployment.backend} deployment this run started")
            deployment.stop()
    failed = bool(server_died) or any(r["failure_ratio"] > settings.failure_threshold for r in results)
    summary = {
        "model": spec.name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "report_dir": str(run_dir), "failure_threshold": settings.failure_threshold, "failed": failed,
        "server_died": server_died, "runs_planned": len(steps),
        "settings": {"users": list(settings.users), "duration_s": settings.duration, "warmup_s": settings.warmup,
                     "spawn_rate": settings.spawn_rate, "protocols": list(settings.protocols),
                     "payloads": list(settings.payloads), "images": payloads.names,
                     "workers": generators.workers, "remote_workers": generators.remote_workers},
        "provenance": provenance(spec, version_dir, deployment, reused=not started),
        "correctness": checked, "runs": results,
    }
    report.write(summary, run_dir)
    _point_latest(run_dir)
    log(report.terminal_summary(summary))
    log(f"\nreport: {run_dir / 'report.html'}\nsummary: {run_dir / 'summary.json'}")
    if server_died:
        import sys
        tail = "\n".join("    " + line for line in server_log.strip().splitlines()[-8:])
        print(f"error: the model server stopped during the sweep ({server_died}); {len(results)} of {len(steps)} runs "
              f"were measured and the report covers them.\n  the server's last log lines:\n{tail}", file=sys.stderr)
    return EXIT_FAILURES if failed else EXIT_OK


def main_bench(spec_path: Path, overrides: Overrides, backend: Optional[str] = None,
               log: Callable[[str], None] = print, generators: Generators = Generators()) -> int:
    """Load and override the spec, run bench, and turn every user-facing failure into one line and an exit code."""
    from spec.errors import run_command
    from spec.loader import load_spec

    def body() -> int:
        generators.check()
        spec = apply_overrides(load_spec(spec_path), overrides)
        return bench(spec, log, backend, generators)

    return run_command(body, interrupted="interrupted: the deployment this run started has been stopped")


def parse_args(argv: Sequence[str]):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m loadtests bench",
                                     description="Benchmark a spec's model over REST and gRPC and write a report.")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--users", help="concurrency levels, e.g. 1,4,16 (default: benchmark.users)")
    parser.add_argument("--duration", help="measured window per run, e.g. 30s (default: benchmark.duration)")
    parser.add_argument("--warmup", help="warm-up per run, e.g. 5s (default: benchmark.warmup)")
    parser.add_argument("--protocols", help="rest,grpc (default: benchmark.protocols)")
    parser.add_argument("--payloads", help="image_b64,tensor_row,tensor_columnar (default: benchmark.payloads)")
    parser.add_argument("--output-dir", help="reports go to <dir>/<model>/<timestamp>/ (default: benchmark.output_dir)")
    parser.add_argument("--backend", choices=["embedded", "docker"], help="override serving.backend")
    group = parser.add_argument_group("distributed load (Locust master and workers)")
    group.add_argument("--workers", type=int, default=0, help="local Locust worker processes per run (default 0: one "
                       "plain process); use about one per spare core")
    group.add_argument("--remote-workers", type=int, default=0,
                       help="workers on other machines (python -m loadtests worker) each run also waits for")
    group.add_argument("--master-bind", default="127.0.0.1", help="address the master listens on (default 127.0.0.1)")
    group.add_argument("--master-port", type=int, default=0, help="the master's port (default: free; fix it, e.g. "
                       "5557, for remote workers)")
    group.add_argument("--target-host", help="the server's address as the workers reach it (default: the "
                       "deployment's, 127.0.0.1)")
    return parser.parse_args(argv)
