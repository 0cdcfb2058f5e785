"""`make capacity SLO=p99:100ms`: the capacity search of every protocol x payload of a spec, its report,
capacity.json and a history row."""
from __future__ import annotations

from typing import Callable, Optional

from loadtests import report
from loadtests.measure.search import measure_cells, open_loop_spec
from loadtests.measure.session import (EXIT_FAILURES, EXIT_INVALID, EXIT_OK, EXIT_THRESHOLD, EXIT_UNINFORMATIVE,
                                       Generators, point_latest, record_history, report_server_death, session,
                                       uninformative)
from loadtests.report import reportpage
from loadtests.report.capacitypage import terminal_table, write


def capacity(spec, log: Callable[[str], None] = print, backend: Optional[str] = None, generators=None,
             profile: bool = False) -> int:
    """Run the capacity search of every protocol x payload of `spec`; returns the exit code."""
    generators = generators or Generators()
    spec = open_loop_spec(spec)
    settings = spec.benchmark
    slo = settings.slo
    runs: list[dict] = []
    with session(spec, log, backend, generators) as current:
        log(f"capacity at {slo}: {len(current.cells)} protocol/payload cells, precision {settings.precision:.0%}, "
            f"{settings.arrival} arrivals; writing to {current.run_dir}")
        results, _stopped = measure_cells(current, log, runs=runs, profile=profile)
    summary = current.summary(runs, generators, len(runs), capacity=results)
    summary = reportpage.write(summary, current.run_dir)
    write(results, current.run_dir, slo)
    point_latest(current.run_dir)
    log(terminal_table(results, slo))
    log("\n".join(report.threshold_lines(summary)))
    log(f"\nreport: {current.run_dir / 'report.html'}\ncapacity: {current.run_dir / 'capacity.json'}")
    for result in results:
        if profile and result.get("profile"):
            log(report.profile_line({"profile": result["profile"], "protocol": result["protocol"],
                                     "wire": result["wire"], "offered_rps": result["profile"]["offered_rps"]},
                                    current.run_dir))
    record_history(spec, "capacity", summary, current.run_dir, log)
    if current.server_died:
        report_server_death(current, len(runs), None, during="capacity search")
        return EXIT_FAILURES
    if summary.thresholds_passed is False:
        return EXIT_THRESHOLD
    if uninformative(summary):
        return EXIT_UNINFORMATIVE
    return EXIT_INVALID if any(r["limited_by"] in ("generator", "probes") for r in results) else EXIT_OK
