"""`python -m loadtests bench --spec FILE [--users 1,4,16] [--duration 30s] ...`: the benchmark (make bench).

`python -m loadtests capacity --spec FILE --slo p99:100ms`: the highest rate within the SLO (make capacity).

`python -m loadtests tune --spec FILE --slo p99:200ms [--budget 20m]`: the best serving configuration (make tune).

`python -m loadtests compare A B [--fail-on p99:+10%]`: B against A, with intervals and verdicts (make compare).

`python -m loadtests history --spec FILE`: the recorded results of a model over time (make history).

`python -m loadtests lifecycle --spec FILE [--parts cold_start,swap,density]`: cold start, a version swap under
load, density (make lifecycle).

`python -m loadtests worker --master-host HOST [--master-port 5557]`: a Locust worker for a bench run on
another machine; it rejoins the master of every run of the sweep until interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from loadtests.commands.bench import bench
from loadtests.commands.capacity import capacity
from loadtests.commands.compare import main_compare
from loadtests.commands.history import main_history
from loadtests.commands.lifecycle import main_lifecycle
from loadtests.commands.tune import tune
from loadtests.commands.worker import main_worker
from loadtests.measure.session import Generators, Overrides, apply_overrides
from spec.errors import UsageError, program, run_command
from spec.loader import load_spec

USAGE = ("usage: python -m loadtests bench --spec FILE [--users 1,4 | --mode open --rates 10,20] [--duration 30s] ...\n"
         "       python -m loadtests capacity --spec FILE --slo p99:100ms [--protocols ...] [--precision 5%]\n"
         "       python -m loadtests tune --spec FILE --slo p99:200ms [--budget 20m] [--strategy quick|grid]\n"
         "       python -m loadtests compare A B [--fail-on p99:+10%] [--min-effect 5%] [--output DIR]\n"
         "       python -m loadtests history --spec FILE [--db URL]\n"
         "       python -m loadtests lifecycle --spec FILE [--parts cold_start,swap,density] [--rate 20] ...\n"
         "       python -m loadtests worker --master-host HOST [--master-port 5557]")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in (["bench"], ["capacity"], ["tune"], ["worker"], ["compare"], ["history"], ["lifecycle"]):
        print(USAGE, file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when a step that needs TensorFlow imports it
    if argv[0] == "compare":
        return main_compare(argv[1:])
    if argv[0] == "history":
        return main_history(argv[1:])
    if argv[0] == "lifecycle":
        return main_lifecycle(argv[1:])
    if argv[0] == "worker":
        return run_command(lambda: main_worker(argv[1:]), interrupted="worker: stopped")

    command = argv[0]
    args = parse_args(argv[1:], command)
    overrides = Overrides(users=getattr(args, "users", None), duration=args.duration, warmup=args.warmup,
                          max_duration=args.max_duration, slo_confidence=args.slo_confidence,
                          protocols=args.protocols, payloads=args.payloads, output_dir=args.output_dir,
                          mode=getattr(args, "mode", None), rates=getattr(args, "rates", None), arrival=args.arrival,
                          max_in_flight=args.max_in_flight, slo=args.slo, precision=getattr(args, "precision", None),
                          floor=getattr(args, "floor", None), budget=getattr(args, "budget", None),
                          strategy=getattr(args, "strategy", None))
    generators = Generators(workers=args.workers, remote_workers=args.remote_workers, master_bind=args.master_bind,
                            master_port=args.master_port, target_host=args.target_host)
    return main_bench(args.spec, overrides, args.backend, generators=generators, command=command,
                      profile=getattr(args, "profile", False))


def main_bench(spec_path: Path, overrides, backend: Optional[str] = None, log: Callable[[str], None] = print,
               generators=None, command: str = "bench", profile: bool = False) -> int:
    """Load and override the spec, run bench, capacity or tune, and turn every user-facing failure into one line."""

    generators = generators or Generators()

    def body() -> int:
        generators.check()
        spec = apply_overrides(load_spec(spec_path, tuned=command != "tune"), overrides)
        if command == "tune":
            if spec.serving.tuned:
                log(f"tune: serving.tuned ({spec.serving.tuned}) is not applied: the baseline is the spec's own "
                    "serving section")
            return tune(spec, log, backend, generators)
        if profile:
            check_profile(spec, backend, generators)
        if command == "capacity":
            return capacity(spec, log, backend, generators, profile=profile)
        return bench(spec, log, backend, generators, profile=profile)

    return run_command(body, interrupted="interrupted: the deployment this run started has been stopped")


def check_profile(spec, backend: Optional[str], generators) -> None:
    """--profile needs the server to write its trace where this machine reads it: before anything is deployed."""

    if (backend or spec.serving.backend) != "embedded":
        raise UsageError("--profile: the server writes its trace on its own file system, which is the container's "
                         "with the docker backend: use --backend embedded (or trace the container yourself with "
                         "tf.profiler.experimental.client.trace and a mounted folder)")
    if generators.target_host:
        raise UsageError(f"--profile: the server at {generators.target_host} writes its trace on its own machine: "
                         "run the bench there, or drop --target-host")


def parse_args(argv: Sequence[str], command: str = "bench"):
    description = {"bench": "Benchmark a spec's model over REST and gRPC and write a report.",
                   "capacity": "Find the highest arrival rate each protocol and payload sustains within a latency SLO.",
                   "tune": "Find the TF Serving configuration (batching, threads, image) with the highest capacity "
                           "within a latency SLO."}[command]
    parser = argparse.ArgumentParser(prog=program(f"python -m loadtests {command}"), description=description)
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--slo", help="latency objective, e.g. p99:100ms (default: benchmark.slo)"
                        + ("; capacity searches for it" if command == "capacity" else
                           "; its percentile is the one each run's validity is judged on"))
    if command in ("capacity", "tune"):
        parser.add_argument("--precision", help="stop when the bracket is this close, e.g. 5%% (default: "
                            "benchmark.precision)")
    if command == "tune":
        parser.add_argument("--budget", help="wall-clock budget of the search, e.g. 20m (default: tune.budget)")
        parser.add_argument("--strategy", help="quick (coordinate search with pruning) or grid (every combination) "
                            "(default: tune.strategy)")
    elif command == "bench":
        parser.add_argument("--mode", help="closed (users) or open (rates) (default: benchmark.mode)")
        parser.add_argument("--rates", help="open loop: requests per second, e.g. 10,20,40 (default: benchmark.rates)")
        parser.add_argument("--users", help="concurrency levels, e.g. 1,4,16 (default: benchmark.users)")
        parser.add_argument("--floor", help="1: also measure the protocol floor (the same signatures with an almost "
                            "free head) through the same sweep; 0: do not (default: benchmark.floor)")
    parser.add_argument("--arrival", help="open loop: poisson or constant (default: benchmark.arrival)")
    parser.add_argument("--max-in-flight", help="open loop: cap on requests in flight (default: "
                        "benchmark.max_in_flight)")
    parser.add_argument("--duration", help="the least each run measures, e.g. 30s (default: benchmark.duration)")
    parser.add_argument("--max-duration", help="the most a run measures while its last three sub-windows disagree, "
                        "e.g. 90s (default: benchmark.max_duration, 3 x duration)")
    parser.add_argument("--slo-confidence", help="judge the SLO on the percentile's upper confidence bound at this "
                        "level, e.g. 0.99 (default: benchmark.slo_confidence: the measured percentile)")
    parser.add_argument("--warmup", help="warm-up per run, e.g. 5s (default: benchmark.warmup)")
    parser.add_argument("--protocols", help="rest,grpc (default: benchmark.protocols)")
    parser.add_argument("--payloads", help="image_b64,tensor_row,tensor_columnar (default: benchmark.payloads)")
    parser.add_argument("--output-dir", help="reports go to <dir>/<model>/<timestamp>/ (default: benchmark.output_dir)")
    if command in ("bench", "capacity"):
        parser.add_argument("--profile", action="store_true",
                            help="trace the server (tensorflow.ProfilerService on its gRPC port) over "
                            + ("the first run's window" if command == "bench" else
                               "one more window at each cell's capacity")
                            + ", into <report>/profile/ for TensorBoard (embedded backend, this machine)")
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


if __name__ == "__main__":
    sys.exit(main())
