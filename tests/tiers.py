"""`make test`: the suite in two tiers, so that waiting overlaps and measuring does not.

1. Tests that wait (servers starting, exports, Docker builds, browsers, fuzzing) run TEST_WORKERS at a time with
   pytest-xdist, a file per worker (`--dist loadfile`: a module's server or Docker image is set up once), the
   longest files first (their times measured by `make test-costs` into tests/costs.json).
2. Tests marked `measures` (they judge latency, throughput or a run's validity) run one at a time afterwards, with
   both cores to themselves, as they always have.

    python -m tests.tiers [pytest arguments]     e.g. tests/integration -k open_loop --durations=30

TEST_WORKERS=0 (or a -m/-n of your own among the arguments) runs one plain pytest instead. The exit code is
pytest's: the first tier's failure if it failed, else the second's; 5 only if neither tier collected a test.

Before the tiers, the project's own modules are byte-compiled into their __pycache__ folders (git ignores them),
even where PYTHONDONTWRITEBYTECODE is set: the suite starts hundreds of Python processes (servers, CLIs,
Locust steps), and without the bytecode each one compiles the modules it imports again, about 0.1 to 0.3 CPU
seconds a process on this 2-core machine. Python checks each file's source time and size, so a stale file is never
used.
"""
from __future__ import annotations

import compileall
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

NOTHING_COLLECTED = 5
INTERRUPTED = 2


def tiers(args: list[str], workers: int) -> list[tuple[str, list[str]]]:
    """(title, pytest arguments) per tier."""
    if workers <= 1 or any(a in ("-m", "-n") or a.startswith(("-n", "--numprocesses")) for a in args):
        return [("the tests", args)]
    # whole files, handed out in the collection's order: the longest first (tests/conftest.py, tests/costs.json)
    return [(f"tests that wait, {workers} at a time", ["-n", str(workers), "--dist", "loadfile",
                                                       "--no-loadscope-reorder", "-m", "not measures", *args]),
            ("tests that measure, one at a time", ["-m", "measures", *args])]


def longest_first(files: Sequence[str], costs: Mapping[str, float], unmeasured: Mapping[str, float]) -> list[str]:
    """Test files in the order the first tier should start them: by their measured seconds (`costs`, written by
    `make test-costs`), else by `unmeasured[file]` (a guess from the file's marks), longest first; ties keep their
    order. Starting the long files first lets the short ones fill the end of both workers' queues."""
    return sorted(files, key=lambda name: -costs.get(name, unmeasured[name]))


REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tfsb", "spec", "exporter", "server", "deploy", "loadtests", "demo", "benchmarks", "dockerfiles", "tests")


def compile_sources(root: Path = REPO) -> bool:
    """Byte-compile the project's packages under `root` (quietly); False if a file does not compile."""
    return all(compileall.compile_dir(root / name, quiet=2) for name in PACKAGES if (root / name).is_dir())


def combined(codes: list[int]) -> int:
    ran = [code for code in codes if code != NOTHING_COLLECTED]
    if not ran:
        return NOTHING_COLLECTED
    return next((code for code in ran if code != 0), 0)


def main(argv: list[str]) -> int:
    try:
        workers = int(os.environ.get("TEST_WORKERS") or 2)
    except ValueError:
        print(f"TEST_WORKERS={os.environ['TEST_WORKERS']!r} is not a number: give how many test processes "
              "run at once (0 or 1: one plain pytest)", file=sys.stderr)
        return 4
    plan = tiers(argv, workers)
    if not compile_sources():  # such a file fails the tests that import it, with its error, as before
        print("a project file does not compile: the tests that import it will say which", flush=True)
    codes = []
    for number, (title, args) in enumerate(plan, 1):
        if len(plan) > 1:
            print(f"== tier {number} of {len(plan)}: {title}", flush=True)
        codes.append(subprocess.call([sys.executable, "-m", "pytest", *args]))
        if codes[-1] == INTERRUPTED:
            break  # Ctrl-C stops the suite, not only its tier
    return combined(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
