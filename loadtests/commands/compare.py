"""`make compare A=<report dir> B=<report dir> [FAIL_ON=p99:+10%]`: B against A, with intervals and verdicts
(analyze/intervals.py), written as compare.json and compare.html; exit 7 when a --fail-on rule broke."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from loadtests.analyze.intervals import (DEFAULT_MIN_EFFECT, compare_rows, load_run, parse_effect, parse_fail_on,
                                         shared_machine)
from loadtests.drive.files import save_atomically
from loadtests.report.comparepage import headline, html_page, terminal
from spec.errors import program, run_command
from spec.results import CompareResult

EXIT_REGRESSION = 7


def compare(path_a: Path, path_b: Path, fail_on: Optional[str] = None, min_effect: Optional[str] = None,
            output: Optional[Path] = None, log=print) -> int:
    """Compare two bench reports; writes compare.json and compare.html; returns 0, or 7 when --fail-on broke."""

    rules, effect = parse_fail_on(fail_on), parse_effect(min_effect)
    a, b = load_run(path_a, "A"), load_run(path_b, "B")
    rows = compare_rows(a, b, effect)
    broken = [dataclasses.replace(row, rule=rule.text) for rule in rules for row in rows if rule.broken_by(row)]
    result = CompareResult(model=b[1].model, a=str(a[0]), b=str(b[0]), mode=b[1].mode,
                           min_effect_pct=effect * 100.0, fail_on=tuple(r.text for r in rules), rows=tuple(rows),
                           broken=tuple(broken), passed=not broken, headline=headline(rows, broken),
                           shared_machine=tuple(shared_machine(rows)))
    out = Path(output).resolve() if output else b[0]
    out.mkdir(parents=True, exist_ok=True)
    save_atomically(out / "compare.json", result.to_json().encode())
    save_atomically(out / "compare.html", html_page(result).encode())
    log(terminal(result))
    log(f"\ncompare: {out / 'compare.html'}\n         {out / 'compare.json'}")
    return EXIT_REGRESSION if broken else 0


def main_compare(argv: Sequence[str]) -> int:
    """`python -m loadtests compare A B [--fail-on p99:+10%] [--min-effect 5%] [--output DIR]`."""
    parser = argparse.ArgumentParser(prog=program("python -m loadtests compare"),
                                     description="Compare two bench reports: change, 95% interval and verdict per "
                                                 "protocol, payload, level and metric.")
    parser.add_argument("a", type=Path, help="the reference report directory (reports/<model>/<timestamp>)")
    parser.add_argument("b", type=Path, help="the report to judge against it")
    parser.add_argument("--fail-on", help=f"exit {EXIT_REGRESSION} when a figure gets worse by more than this, "
                        "e.g. p99:+10%%,rps:-5%% (only changes judged slower count)")
    parser.add_argument("--min-effect", help=f"changes smaller than this are 'no change' (default "
                        f"{DEFAULT_MIN_EFFECT * 100:.0f}%%)")
    parser.add_argument("--output", type=Path, help="where compare.json and compare.html go (default: B's directory)")
    args = parser.parse_args(argv)
    return run_command(lambda: compare(args.a, args.b, args.fail_on, args.min_effect, args.output),
                       interrupted="compare: interrupted")
