"""`python -m loadtests bench --spec FILE [--users 1,4,16] [--duration 30s] ...`: the benchmark (make bench).

`python -m loadtests capacity --spec FILE --slo p99:100ms`: the highest rate within the SLO (make capacity).

`python -m loadtests tune --spec FILE --slo p99:200ms [--budget 20m]`: the best serving configuration (make tune).

`python -m loadtests compare A B [--fail-on p99:+10%]`: B against A, with intervals and verdicts (make compare).

`python -m loadtests history --spec FILE`: the recorded results of a model over time (make history).

`python -m loadtests worker --master-host HOST [--master-port 5557]`: a Locust worker for a bench run on
another machine; it rejoins the master of every run of the sweep until interrupted.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

USAGE = ("usage: python -m loadtests bench --spec FILE [--users 1,4 | --mode open --rates 10,20] [--duration 30s] ...\n"
         "       python -m loadtests capacity --spec FILE --slo p99:100ms [--protocols ...] [--precision 5%]\n"
         "       python -m loadtests tune --spec FILE --slo p99:200ms [--budget 20m] [--strategy quick|grid]\n"
         "       python -m loadtests compare A B [--fail-on p99:+10%] [--min-effect 5%] [--output DIR]\n"
         "       python -m loadtests history --spec FILE [--db URL]\n"
         "       python -m loadtests worker --master-host HOST [--master-port 5557]")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in (["bench"], ["capacity"], ["tune"], ["worker"], ["compare"], ["history"]):
        print(USAGE, file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv[0] == "compare":
        from loadtests.compare import main_compare
        return main_compare(argv[1:])
    if argv[0] == "history":
        from loadtests.history import main_history
        return main_history(argv[1:])
    if argv[0] == "worker":
        from loadtests.worker import main_worker
        from spec.errors import run_command
        return run_command(lambda: main_worker(argv[1:]), interrupted="worker: stopped")
    from loadtests.bench import Generators, Overrides, main_bench, parse_args

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
    return main_bench(args.spec, overrides, args.backend, generators=generators, command=command)


if __name__ == "__main__":
    sys.exit(main())
