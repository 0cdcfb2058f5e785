"""`make perf-generator`: how much load one Locust process can offer, open loop against closed loop.

Against the stand-in server answering at once (benchmarks/standin.py), for REST and gRPC:

* closed loop: the throughput of one Locust process with `--users` users sending back to back;
* open loop: the highest constant rate the same process keeps with under 1% of requests starting late
  (bracketed by doubling, then bisected to 5%), each rate a full run with warm-up.

Prints both and their ratio, measured in this run. Goal: open loop reaches at least 0.8 of closed loop, so an
open-loop run is not limited by its generator long before a closed-loop one would be.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.figures import Figures
from benchmarks.standin import StandIn, synthetic_payloads
from loadtests.analyze import validity
from loadtests.measure.run import Step, Target, run_and_measure

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
GOAL = 0.8
MAX_LATE = 0.01


def headroom(server, payload_file: Path, out_dir: Path, protocol: str, users: int, seconds: float) -> dict:

    target = Target(model=server.model, rest_url=server.rest_url, grpc_target=server.grpc_target,
                    payload_file=payload_file, warmup_s=2.0, duration_s=seconds, spawn_rate=100.0,
                    server_pid=server.pid, arrival="constant", drain_s=5.0)
    rules = validity.Rules(min_duration_s=1.0)
    sizes = {(protocol, "image_b64"): [0] * 4}
    runs = []

    def run(step):
        entry = run_and_measure(step, target, out_dir / protocol, sizes, [(64, 48)] * 4, rules)
        runs.append(entry)
        return entry

    closed = run(Step(protocol, "image_b64", users=users))

    def keeps(rate: float) -> bool:
        entry = run(Step(protocol, "image_b64", rate=round(rate, 1), tag=f"h{len(runs)}"))
        ok = entry["late_ratio"] < MAX_LATE and entry["rps"] >= 0.98 * rate and entry["failures"] == 0
        print(f"    {protocol} open loop at {rate:7.1f}/s: achieved {entry['rps']:7.1f}/s, late "
              f"{entry['late_ratio']:.2%}, generator CPU {entry['generator_cpu_percent']:.0f}%: "
              + ("kept" if ok else "not kept"), flush=True)
        return ok

    kept_cpu = {}

    def keeps_at(rate: float) -> bool:
        ok = keeps(rate)
        if ok:
            kept_cpu[rate] = runs[-1]["generator_cpu_percent"]
        return ok

    low, high = None, None
    rate = closed["rps"] * 0.5
    while low is None or high is None:
        if keeps_at(rate):
            low = rate
            rate *= 1.5
        else:
            high = rate
            rate /= 1.5
        if rate < 1:
            break
    while low and high and (high - low) / low > 0.05:
        middle = (low + high) / 2
        if keeps_at(middle):
            low = middle
        else:
            high = middle
    return {"protocol": protocol, "closed_rps": closed["rps"], "closed_generator_cpu": closed["generator_cpu_percent"],
            "open_rps": low or 0.0, "open_generator_cpu": kept_cpu.get(low, float("nan")),
            "server_cpu": closed.get("server_cpu_percent") or float("nan"),
            "ratio": (low or 0.0) / closed["rps"] if closed["rps"] else 0.0}


def main() -> int:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8, help="closed-loop users of the one process")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run")
    parser.add_argument("--protocols", default="rest,grpc")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        _, payload_file = synthetic_payloads(Path(tmp))
        with StandIn(payload_file, service_ms=0.0) as server:
            for protocol in args.protocols.split(","):
                print(f"{protocol}: closed loop with {args.users} users, then open-loop rates", flush=True)
                results.append(headroom(server, payload_file, Path(tmp), protocol, args.users, args.seconds))
    print(f"\none Locust process against a server that answers at once (goal: open loop >= {GOAL:.1f}x closed)")
    print(f"  {'protocol':8} | {'closed loop req/s (CPU)':>23} | {'open loop req/s, <1% late (CPU)':>31} | "
          f"{'open/closed':>11} | server CPU, closed")
    for r in results:
        print(f"  {r['protocol']:8} | {r['closed_rps']:15.1f} ({r['closed_generator_cpu']:3.0f}%) | "
              f"{r['open_rps']:23.1f} ({r['open_generator_cpu']:3.0f}%) | {r['ratio']:10.2f}x | {r['server_cpu']:.0f}%")
    print("  (CPU: the generator's, % of one core. A generator well under 100% in closed loop means the stand-in "
          "server, not the generator, set that figure)")
    met = all(r["ratio"] >= GOAL for r in results)
    print(f"  goal {'met' if met else 'NOT met'}")
    figures = Figures("perf-generator", "make perf-generator", "One Locust process's open-loop headroom")
    figures.note(f"One Locust process against a stand-in that answers at once: closed loop with {args.users} users, "
                 f"and the highest constant rate it keeps open loop with under 1% late ({args.seconds:g} s windows). "
                 "CPU is the generator's, in % of one core; a generator well under 100% in closed loop means the "
                 "stand-in server, not the generator, set that figure.")
    for r in results:
        figures.add(f"{r['protocol']}: open loop / closed loop", r["ratio"], "{:.2f}x", f">= {GOAL:.1f}x",
                    r["ratio"] >= GOAL,
                    f"closed {r['closed_rps']:,.0f} req/s (generator {r['closed_generator_cpu']:.0f}%), "
                    f"open {r['open_rps']:,.0f} req/s (generator {r['open_generator_cpu']:.0f}%), server CPU "
                    f"{r['server_cpu']:.0f}% in closed loop")
    figures.save(partial=args.protocols != "rest,grpc")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
