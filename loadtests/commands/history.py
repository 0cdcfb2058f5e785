"""`make history SPEC=...`: a model's recorded bench, capacity and tune results over time, in the terminal and
as reports/<model>/history.png."""
from __future__ import annotations

import argparse
from pathlib import Path

from loadtests.analyze.resultsdb import ENV, database_url, display, load
from loadtests.report.historypage import table
from loadtests.report.plots import plot_history
from spec.errors import SpecError, program, run_command
from spec.loader import load_spec
from spec.resultschema import FIELD as SCHEMA_FIELD, SCHEMA_VERSION, readable


def main_history(argv) -> int:
    """`python -m loadtests history --spec FILE [--db URL] [--limit N]`."""
    parser = argparse.ArgumentParser(prog=program("python -m loadtests history"),
                                     description="The recorded bench, capacity and tune results of a spec's model.")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--db", help=f"the results database (default: ${ENV}, else benchmark.results_db)")
    parser.add_argument("--limit", type=int, default=50, help="the last N results (default 50)")
    args = parser.parse_args(argv)

    def body() -> int:
        spec = load_spec(args.spec)
        url = database_url(spec, args.db)
        if url is None:
            raise SpecError(f"{spec.where('benchmark', 'results_db')}: benchmark.results_db is 'off': nothing is "
                            "recorded, so there is no history; give --db URL")
        results = load(url, spec.name, args.limit)
        newer = [r for r in results if not readable(r[SCHEMA_FIELD])]
        if newer:
            results = [r for r in results if readable(r[SCHEMA_FIELD])]
            print(f"history: {len(newer)} of the last {len(newer) + len(results)} results were recorded by a newer "
                  f"tfsb (schema_version {max(r[SCHEMA_FIELD] for r in newer)}; this one reads up to "
                  f"{SCHEMA_VERSION}) and are left out: upgrade tfsb to see them")
        if not results and newer:
            return 0
        if not results:
            print(f"no results of '{spec.name}' recorded in {display(url)} yet: run make bench SPEC={args.spec}")
            return 0
        print(f"{spec.name}: {len(results)} results in {display(url)}\n{table(results)}")
        out = plot_history(results, spec.resolve(spec.benchmark.output_dir) / spec.name / "history.png")
        print(f"\nplot: {out}")
        return 0

    return run_command(body, interrupted="history: interrupted")
