"""`python -m loadtests worker --master-host HOST`: a load generator on another machine for `make bench`.

Each run of the sweep is its own Locust master, which quits at the end of its run and takes its workers
with it; this command starts a new `locust --worker` after each one, so one command serves a whole sweep.
The worker gets the payloads, the endpoints and the measurement window from the master: it needs this
repository and its venv (make venv), not the model or the spec.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Sequence

from loadtests.measure.run import REPO, worker_command
from spec.errors import program

RETRY_PAUSE_S = 2.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("python -m loadtests worker"),
                                     description="Join the Locust master of every run of a make bench sweep.")
    parser.add_argument("--master-host", required=True, help="the bench machine's address (its MASTER_BIND)")
    parser.add_argument("--master-port", type=int, default=5557, help="the bench's MASTER_PORT (default 5557)")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many runs (default 0: until Ctrl-C)")
    return parser.parse_args(argv)


def main_worker(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    done = 0
    print(f"worker: joining the Locust master at {args.master_host}:{args.master_port} for each run (Ctrl-C stops)",
          flush=True)
    try:
        while not args.runs or done < args.runs:
            started = time.monotonic()
            code = subprocess.run(worker_command(args.master_host, args.master_port), cwd=REPO,
                                  stdin=subprocess.DEVNULL).returncode
            if code == 0 and time.monotonic() - started > RETRY_PAUSE_S:
                done += 1
                print(f"worker: run {done} finished", flush=True)
            else:  # no master yet (Locust gives up after about a minute) or a failed start: try again shortly
                time.sleep(RETRY_PAUSE_S)
    except KeyboardInterrupt:
        print("worker: stopped", file=sys.stderr)
        return 130
    return 0
