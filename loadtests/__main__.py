"""`python -m loadtests bench --spec FILE [--users 1,4,16] [--duration 30s] ...`: the benchmark (make bench)."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

USAGE = "usage: python -m loadtests bench --spec FILE [--users 1,4] [--duration 30s] [--warmup 5s] ..."


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["bench"]:
        print(USAGE, file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from loadtests.bench import Overrides, main_bench, parse_args

    args = parse_args(argv[1:])
    overrides = Overrides(users=args.users, duration=args.duration, warmup=args.warmup, protocols=args.protocols,
                          payloads=args.payloads, output_dir=args.output_dir)
    return main_bench(args.spec, overrides, args.backend)


if __name__ == "__main__":
    sys.exit(main())
