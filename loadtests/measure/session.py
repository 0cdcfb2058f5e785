"""The session every measuring command shares (bench, capacity, tune, the floor): command-line overrides, where
the load comes from, a model exported, served, checked and torn down (`session`), provenance, run directories,
the results history and the exit codes. It imports none of the commands: they import it."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from deploy.deployment import deployment_for, preflight
from deploy.waiting import rest_status
from exporter.describe import read_meta_graphs
from exporter.export import ensure_exported
from loadtests.analyze import resultsdb, validity
from loadtests.analyze.figures import threshold_rows
from loadtests.analyze.machine import mark_slower_runs
from loadtests.drive.payloads import answer_spread, request_bytes
from loadtests.drive.servermetrics import metrics_url
from loadtests.measure import correctness, run
from loadtests.measure.payloadsets import load_or_build, payload_plan
from server.version import SERVER_VERSION
from spec.benchmarkschema import BenchmarkSpec
from spec.errors import SpecError, UsageError
from spec.results import BenchSummary
from spec.schema import Spec
from spec.thresholds import broken, evaluate
from spec.tuning import TuneSpec

EXIT_OK, EXIT_FAILURES, EXIT_INVALID, EXIT_UNINFORMATIVE, EXIT_THRESHOLD = 0, 1, 4, 5, 6  # user errors (2),
# mismatches (3), Ctrl-C (130): spec.errors; a broken make compare --fail-on rule (7): loadtests.commands.compare
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides of the spec's benchmark section (None keeps the spec's value)."""
    users: Optional[str] = None
    duration: Optional[str] = None
    max_duration: Optional[str] = None
    slo_confidence: Optional[str] = None
    warmup: Optional[str] = None
    protocols: Optional[str] = None
    payloads: Optional[str] = None
    output_dir: Optional[str] = None
    mode: Optional[str] = None
    rates: Optional[str] = None
    arrival: Optional[str] = None
    max_in_flight: Optional[str] = None
    slo: Optional[str] = None
    precision: Optional[str] = None
    floor: Optional[str] = None
    budget: Optional[str] = None     # tune only
    strategy: Optional[str] = None   # tune only


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
            raise UsageError(f"WORKERS / REMOTE_WORKERS must be 0 or more (got {self.workers} / {self.remote_workers})")
        if self.remote_workers and not self.master_port:
            raise UsageError("REMOTE_WORKERS needs a fixed MASTER_PORT (e.g. 5557) that the remote workers connect to")

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

    spec = _tune_overrides(spec, overrides)
    values = spec.benchmark.model_dump()
    changed = {}
    for key in ("users", "protocols", "payloads", "rates"):
        raw = getattr(overrides, key)
        if raw is not None:
            items = [item.strip() for item in raw.split(",") if item.strip()]
            changed[key] = [int(i) if key == "users" and i.lstrip("-").isdigit() else i for i in items]
    for key in ("duration", "max_duration", "slo_confidence", "warmup", "output_dir", "mode", "arrival",
                "max_in_flight", "slo", "precision", "floor"):
        if getattr(overrides, key) is not None:
            changed[key] = getattr(overrides, key)
    if not changed:
        return spec
    try:
        benchmark = BenchmarkSpec.model_validate({**values, **changed})
    except ValidationError as exc:
        # a rule between keys (max_duration >= duration) has no location: its message names the keys
        problems = "; ".join((f"{e['loc'][0]}={changed.get(e['loc'][0])!r}: " if e["loc"] else "") + e["msg"]
                             for e in exc.errors())
        raise UsageError(f"command-line override: {problems}") from None
    if overrides.output_dir is not None:  # relative to where the command runs, not to the spec
        benchmark = benchmark.model_copy(update={"output_dir": Path(overrides.output_dir).resolve()})
    return spec.model_copy(update={"benchmark": benchmark})


def _tune_overrides(spec: Spec, overrides: Overrides) -> Spec:
    """The spec with BUDGET / STRATEGY applied to its tune section, validated like the file."""
    from pydantic import ValidationError

    changed = {k: getattr(overrides, k) for k in ("budget", "strategy") if getattr(overrides, k) is not None}
    if not changed:
        return spec
    try:
        tune = TuneSpec.model_validate({**spec.tune.model_dump(), **changed})
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}={changed.get(e['loc'][0])!r}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"command-line override: {problems}") from None
    return spec.model_copy(update={"tune": tune})


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+uncommitted changes" if dirty else "")) if commit else "unknown"


def signature_hash(version_dir: Path) -> str:
    """sha256 of the serving MetaGraph's signature map: equal hashes mean clients see the same API."""

    digest = hashlib.sha256()
    for meta_graph in read_meta_graphs(version_dir):
        if "serve" in meta_graph.meta_info_def.tags:
            for name in sorted(meta_graph.signature_def):
                digest.update(name.encode())
                digest.update(meta_graph.signature_def[name].SerializeToString(deterministic=True))
    return digest.hexdigest()


def cpu_model() -> str:
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
    serving_version = deployment.serving_version
    if serving_version is None and deployment.backend == "embedded":
        serving_version = SERVER_VERSION
    return {
        "spec": str(spec.origin), "spec_sha256": spec.sha256, "model": spec.name,
        "model_version_dir": str(version_dir), "model_signature_sha256": signature_hash(version_dir),
        "tensorflow": version("tensorflow"), "serving_version": serving_version, "image": image,
        "backend": deployment.backend, "server_started_by_bench": not reused,
        "batching": spec.serving.batching.enabled,
        "tuned_from": str(spec.tuned_from) if spec.tuned_from else None, "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
        "python": platform.python_version(), "locust": version("locust"), "grpcio": version("grpcio"),
        "git_commit": git_commit(), "host": platform.node(),
        **deployment.server_identity,  # server (TF Serving or ours), base_image and its id: what really served
    }


def new_run_dir(spec: Spec, *under: str) -> Path:
    """A new <output_dir>/<model>/<under...>/<UTC timestamp>[-N]/ directory."""
    base = spec.resolve(spec.benchmark.output_dir).joinpath(spec.name, *under)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = base / stamp
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def point_latest(run_dir: Path) -> None:
    """<run_dir's parent>/latest -> run_dir, replaced atomically."""
    latest = run_dir.parent / "latest"
    temporary = run_dir.parent / f".latest-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, latest)


@dataclass
class Session:
    """What a bench or capacity command has ready once the model is exported, served and checked."""
    spec: Spec
    version_dir: Path
    deployment: object
    started: bool
    payloads: object
    payload_file: Path
    checked: list
    per_request: dict
    target: "run.Target"
    run_dir: Path
    rules: "validity.Rules"
    answers: dict = dataclasses.field(default_factory=dict)  # payloads.answer_spread: can the checks fail?
    cells: list = dataclasses.field(default_factory=list)    # (protocol, payload) runs the payloads allow
    server_died: Optional[str] = None
    server_log: str = ""

    def server_gone(self) -> Optional[str]:
        """Why the model is no longer served (None while it is AVAILABLE)."""

        endpoints = self.deployment.endpoints
        status = rest_status(endpoints)
        return None if status == "AVAILABLE" else (self.deployment.alive() or f"{endpoints.status_url}: {status}")

    def summary(self, results: list[dict], generators: "Generators", runs_planned: int, **extra) -> BenchSummary:
        """summary.json's content: settings, provenance, correctness, every run and the thresholds' verdicts."""

        settings = self.spec.benchmark
        if "capacity" not in extra:  # a capacity search's probes are not a bench's runs to hold against each other
            mark_slower_runs(results)
        failed = bool(self.server_died) or any(r["failure_ratio"] > settings.failure_threshold for r in results)
        invalid = [r for r in results if not r["valid"]]
        summary = {
            "model": self.spec.name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "report_dir": str(self.run_dir), "mode": settings.mode, "failure_threshold": settings.failure_threshold,
            "failed": failed, "valid": not invalid, "invalid_runs": len(invalid),
            "server_died": self.server_died, "runs_planned": runs_planned,
            "settings": {"mode": settings.mode, "users": list(settings.users), "rates": list(settings.rates),
                         "arrival": settings.arrival, "max_in_flight": settings.max_in_flight,
                         "duration_s": settings.duration, "max_duration_s": settings.longest,
                         "warmup_s": settings.warmup, "slo_confidence": settings.slo_confidence,
                         "spawn_rate": settings.spawn_rate, "protocols": list(settings.protocols),
                         "grpc_client": settings.grpc_client,
                         "payloads": list(settings.payloads), "images": self.payloads.names,
                         "workers": generators.workers, "remote_workers": generators.remote_workers,
                         "slo": settings.slo.model_dump() if settings.slo else None,
                         "repeats": settings.repeats, "thresholds": settings.thresholds,
                         "validity": dataclasses.asdict(self.rules)},
            "provenance": provenance(self.spec, self.version_dir, self.deployment, reused=not self.started),
            "correctness": self.checked, "answers": self.answers, "runs": results, **extra,
        }
        verdicts = evaluate(settings.threshold_rules, threshold_rows(summary), capacity="capacity" in extra)
        summary["thresholds"] = verdicts
        summary["thresholds_passed"] = not broken(verdicts) if verdicts else None
        return BenchSummary.made(summary)


def with_monitoring(spec: Spec, log: Callable[[str], None]) -> Spec:
    """The spec with Prometheus on: every run's server-side breakdown is read from it."""
    if spec.serving.monitoring.enabled:
        return spec
    log(f"monitoring: serving.monitoring.enabled is false in {spec.origin}; a deployment this command starts serves "
        f"Prometheus at {spec.serving.monitoring.path} anyway, since each run's server breakdown is read from it")
    monitoring = spec.serving.monitoring.model_copy(update={"enabled": True})
    serving = spec.serving.model_copy(update={"monitoring": monitoring})
    return spec.model_copy(update={"serving": serving})


@contextlib.contextmanager
def session(spec: Spec, log: Callable[[str], None], backend: Optional[str], generators: "Generators",
            run_dir: Optional[Path] = None):
    """Export if needed, deploy (unless already up), check every (protocol, payload) cell's answers; stop at exit.

    Yields a Session with a fresh report directory and the Locust target; the deployment this started is stopped
    however the block ends (Ctrl-C included).
    """

    preflight(spec, deployment_for(spec, backend))  # the engine and the ports, before minutes of export or training
    version_dir = ensure_exported(spec, log)
    plan, payload_names = payload_plan(spec, version_dir, spec.benchmark.payloads)  # before anything is deployed
    if plan is not None:
        if spec.benchmark.floor:
            raise SpecError(f"{spec.where('benchmark', 'floor')}: benchmark.floor mirrors this harness's image "
                            f"signatures, and {version_dir} is benchmarked through its own signature "
                            f"'{plan.signature}': drop FLOOR / benchmark.floor")
        log(f"payloads: signature '{plan.signature}' of {version_dir}: image input '{plan.image_input}' "
            f"({plan.image_kind}{'' if plan.image_kind == 'bytes' else f' {plan.height}x{plan.width}x{plan.channels}'})"
            + "".join(f", '{e.alias}' = {e.value}" for e in plan.extras)
            + f"; outputs {', '.join(plan.outputs)}; payloads {', '.join(payload_names)}")
    spec = spec.model_copy(update={"benchmark": spec.benchmark.model_copy(update={"payloads": tuple(payload_names)})})
    settings = spec.benchmark
    cells = [(s.protocol, s.payload) for s in run.plan([1], settings.protocols, settings.payloads)]
    spec = with_monitoring(spec, log)
    with deployment_for(spec, backend, log) as deployment:  # stops what it started, however the block ends
        payloads, payload_file = load_or_build(spec, version_dir, settings.payloads, log, plan=plan)
        endpoints = deployment.endpoints
        log(f"correctness: {len(payloads)} images x {len(cells)} protocol/payload pairs against the in-process answer")
        checked = correctness.check(payloads, endpoints.rest_url, endpoints.grpc_target, spec.name, cells)
        worst = max(c["max_abs_diff"] for c in checked)
        log(f"correctness: top-1 equal everywhere, largest score difference {worst:.2e}")
        answers = answer_spread(payloads.expected)
        answers["accepted"] = settings.accept_uninformative_answers
        if not answers["informative"]:
            accept = ("accepted by benchmark.accept_uninformative_answers" if answers["accepted"] else
                      f"the bench exits {EXIT_UNINFORMATIVE} after the report unless "
                      f"{spec.where('benchmark')} sets benchmark.accept_uninformative_answers: true")
            source = spec.model.source
            if getattr(source, "kind", "") == "keras_application" and source.weights is None and source.calibrate:
                accept += (f"; {version_dir} may predate calibrated random weights: export a new version "
                           f"(make export SPEC={spec.origin})")
            log(f"correctness: NOT INFORMATIVE: {answers['reason']}; {accept}")
        else:
            log(f"correctness: informative: {answers['distinct_top1']} different top-1 classes over "
                f"{answers['images']} images, scores differ by up to {answers['max_score_spread']:.2f}")
        per_request = {cell: request_bytes(payloads, cell[0], cell[1], spec.name) for cell in cells}
        if run_dir is None:
            run_dir = new_run_dir(spec)
        run_dir.mkdir(parents=True, exist_ok=True)
        rest_url, grpc_target = generators.endpoints(endpoints.rest_url, endpoints.grpc_target)
        target = run.Target(model=spec.name, rest_url=rest_url, grpc_target=grpc_target,
                            payload_file=payload_file, warmup_s=settings.warmup, duration_s=settings.duration,
                            max_duration_s=settings.longest, stability_percent=settings.stability_percent,
                            judged_percentile=validity.Rules.of(settings).judged_percentile,
                            spawn_rate=settings.spawn_rate, server_pid=deployment.server_pid,
                            metrics_url=metrics_url(rest_url, spec.serving.monitoring.path),
                            workers=generators.workers, remote_workers=generators.remote_workers,
                            master_bind=generators.master_bind, master_port=generators.master_port,
                            arrival=settings.arrival, seed=settings.images.seed,
                            max_in_flight=settings.max_in_flight, late_tolerance_ms=settings.late_tolerance * 1000.0,
                            drain_s=settings.drain, grpc_client=settings.grpc_client)
        if target.distributed:
            log(f"load generators: a Locust master on {target.master_bind}:{target.master_port or '<free port>'} "
                f"with {generators.workers} local and {generators.remote_workers} remote workers per run")
            if generators.remote_workers and target.master_bind in ("127.0.0.1", "localhost"):
                log("  note: the master listens on loopback, so only workers on this machine can join "
                    "(MASTER_BIND sets the address; TARGET_HOST the server's address as the workers see it)")
        current = Session(spec, version_dir, deployment, deployment.started, payloads, payload_file, checked,
                          per_request, target, run_dir, validity.Rules.of(settings), answers, cells)
        try:
            yield current
        finally:
            current.server_died = current.server_gone()
            current.server_log = deployment.logs() if current.server_died else ""


def report_server_death(current: Session, measured: int, planned: Optional[int], during: str = "sweep") -> None:
    import sys
    tail = "\n".join("    " + line for line in current.server_log.strip().splitlines()[-8:])
    counted = f"{measured} of {planned}" if planned is not None else str(measured)
    print(f"error: the model server stopped during the {during} ({current.server_died}); {counted} runs were "
          f"measured and the report covers them.\n  the server's last log lines:\n{tail}", file=sys.stderr)


def uninformative(summary: BenchSummary) -> bool:
    """The answer checks could not have failed (the same answer for every image), and the spec did not accept it."""
    answers = summary.answers
    return bool(answers) and not answers["informative"] and not answers.get("accepted")


def exit_code(summary: BenchSummary) -> int:
    """1 when a run failed (or the server died), else 6 when a threshold is broken, else 5 when no answer check
    could fail, else 4 when a run was invalid, else 0."""
    if summary.failed:
        return EXIT_FAILURES
    if summary.thresholds_passed is False:
        return EXIT_THRESHOLD
    if uninformative(summary):
        return EXIT_UNINFORMATIVE
    return EXIT_INVALID if not summary.valid else EXIT_OK


def record_history(spec: Spec, kind: str, summary: BenchSummary, run_dir: Path, log: Callable[[str], None]) -> None:
    """Add the result to the results database (benchmark.results_db, or TFSB_RESULTS_DB) unless it is 'off'."""
    where = resultsdb.database_url(spec)
    if where is None:
        return
    resultsdb.record(where, kind, summary, run_dir)
    log(f"history: recorded in {resultsdb.display(where)} (make history SPEC={spec.origin})")
