"""`make bench`: export if needed, deploy (unless already up), check correctness, sweep, report, tear down."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from loadtests import report
from loadtests.measure import run
from loadtests.measure.floor import beside, run_floor
from loadtests.measure.session import Generators, exit_code, point_latest, record_history, report_server_death, session
from loadtests.report import reportpage
from spec.schema import Spec


def bench(spec: Spec, log: Callable[[str], None] = print, backend: Optional[str] = None,
          generators: Generators = Generators(), profile: bool = False) -> int:
    """Run the whole benchmark for `spec`; returns the process exit code (see EXIT_*)."""
    with session(spec, log, backend, generators) as current:
        settings = current.spec.benchmark  # the payloads as resolved for the served signatures
        open_loop = settings.mode == "open"
        steps = repeated(run.plan(settings.users, settings.protocols, settings.payloads,
                                  rates=settings.rates if open_loop else None), settings.repeats)
        levels = f"rates {list(settings.rates)} req/s, {settings.arrival} arrivals" if open_loop \
            else f"users {list(settings.users)}"
        drain = settings.drain / 2 if open_loop else 0  # a typical drain: the window's last answers
        total = len(steps) * (settings.warmup + settings.duration + drain + 8)
        times = f", {settings.repeats} repeats interleaved" if settings.repeats > 1 else ""
        log(f"sweep: {len(steps)} {settings.mode}-loop runs ({levels}{times}), about {total / 60:.1f} minutes; "
            f"writing to {current.run_dir}")
        results = run.sweep(steps, current.target, current.run_dir, current.per_request, current.payloads.sizes, log,
                            server_gone=current.server_gone, rules=current.rules,
                            profile_dir=current.run_dir / "profile" if profile else None)
        for step, entry in zip(steps, results):
            entry["repeat"] = int(step.tag[3:]) if step.tag.startswith("rep") else 1
    floor = None
    if settings.floor and not current.server_died:
        floor = run_floor(spec, current.version_dir, current.run_dir, steps, backend, generators, log)
        floor["beside"] = beside(results, floor["runs"])
    summary = current.summary(results, generators, len(steps), **({"floor": floor} if floor else {}))
    if floor:  # the floor's runs are measurements the report shows: they count for the verdict too
        floor_invalid = sum(not r["valid"] for r in floor["runs"])
        summary = dataclasses.replace(
            summary, failed=summary.failed or bool(floor["server_died"]) or any(
                r["failure_ratio"] > settings.failure_threshold for r in floor["runs"]),
            invalid_runs=summary.invalid_runs + floor_invalid, valid=summary.valid and not floor_invalid)
    summary = reportpage.write(summary, current.run_dir)
    point_latest(current.run_dir)
    log(report.terminal_summary(summary))
    log(f"\nreport: {current.run_dir / 'report.html'}\nsummary: {current.run_dir / 'summary.json'}")
    if profile and results:
        log(report.profile_line(results[0], current.run_dir))
    record_history(spec, "bench", summary, current.run_dir, log)
    if current.server_died:
        report_server_death(current, len(results), len(steps))
    return exit_code(summary)


def repeated(steps: Sequence["run.Step"], repeats: int) -> list["run.Step"]:
    """The sweep `repeats` times, interleaved (all of it, then all of it again), each repeat's steps tagged."""
    if repeats <= 1:
        return list(steps)
    return [dataclasses.replace(step, tag=f"rep{k}") for k in range(1, repeats + 1) for step in steps]
