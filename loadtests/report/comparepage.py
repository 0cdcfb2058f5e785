"""Compare's result in words: the headline, the terminal table and the self-contained compare.html (a forest plot
of the changes with their intervals, then the table)."""
from __future__ import annotations

import html
import json
import math
from typing import Sequence

from loadtests.analyze.intervals import BLOCKS
from loadtests.report import chart_slot, fmt, shell
from spec.results import CompareResult, CompareRow


def _level(row: CompareRow, mode: str) -> str:
    return f"{row.level:g}/s" if mode == "open" else f"{row.level:g} users"


def _change(row: CompareRow) -> str:
    return "n/a" if row.change_pct is None else f"{row.change_pct:+.1f}%"


def _ci(ci) -> str:
    return "n/a" if not ci else f"[{ci[0]:+.1f}%, {ci[1]:+.1f}%]"


def headline(rows: Sequence[CompareRow], broken: Sequence[CompareRow]) -> str:
    """One sentence: what changed, by how much at worst, and whether a --fail-on rule broke."""
    changed = [r for r in rows if r.verdict != "no change"]
    if not changed:
        text = f"no change in any of {len(rows)} figures"
    else:
        worst = max(changed, key=lambda r: abs(r.change_pct))
        slower = sum(r.verdict == "slower" for r in changed)
        text = (f"{slower} of {len(rows)} figures slower, {len(changed) - slower} faster; the largest change: "
                f"{'REST' if worst.protocol == 'rest' else 'gRPC'} {worst.wire} {worst.metric} "
                f"{worst.change_pct:+.1f}% (95% CI {_ci(worst.ci95_pct)})")
    return text + (f"; {len(broken)} --fail-on breach(es)" if broken else "")


def terminal(result: CompareResult) -> str:
    mode = result.mode
    lines = [f"compare: A {result.a}\n         B {result.b}",
             f"  minimum effect {result.min_effect_pct:g}%; intervals: " + ", ".join(sorted({r.method for r in result.rows})),
             f"  {'protocol payload':22} {'level':>10} {'metric':>6} | {'A':>9} {'B':>9} | {'change':>8} "
             f"{'95% CI':>18} | verdict"]
    for r in result.rows:
        name = f"{'REST' if r.protocol == 'rest' else 'gRPC'} {r.wire}"
        flag = "" if r.valid else "  (an invalid run)"
        lines.append(f"  {name:22} {_level(r, mode):>10} {r.metric:>6} | {fmt(r.a):>9} {fmt(r.b):>9} | "
                     f"{_change(r):>8} {_ci(r.ci95_pct):>18} | {r.verdict}{flag}")
    lines.append(f"\n  {result.headline}")
    if result.shared_machine:
        lines.append("  ! shared machine (a change may be the machine's, not the setup's): "
                     + "; ".join(result.shared_machine))
    for b in result.broken:
        lines.append(f"  FAIL-ON {b.rule}: {b.protocol} {b.wire} {_level(b, mode)} {b.metric} "
                     f"{b.change_pct:+.1f}%")
    return "\n".join(lines)


def _noise(row: CompareRow) -> str:
    """The half-width the run-to-run noise adds to a one-run-per-side interval ('' where it does not apply)."""
    noise = row.run_noise_pct
    return "" if noise is None else ("n/a" if not math.isfinite(noise) else f"&plusmn;{noise:.1f}%")


def chart_data(result: CompareResult) -> dict:
    """The forest chart's rows for report.js: each figure's change and its 95% interval."""
    return {"changes": {"effect": result.min_effect_pct, "rows": [
        {"label": f"{r.protocol} {r.wire} {_level(r, result.mode)} {r.metric}", "change": r.change_pct,
         "low": r.ci95_pct[0] if r.ci95_pct else None, "high": r.ci95_pct[1] if r.ci95_pct else None,
         "verdict": r.verdict} for r in result.rows]}}


def html_page(result: CompareResult) -> str:
    esc = html.escape
    body = "".join(
        f"<tr class='{r.verdict.replace(' ', '-')}'><td>{esc(r.protocol)}</td><td>{esc(r.wire)}</td>"
        f"<td>{esc(_level(r, result.mode))}</td><td>{r.metric}</td><td>{fmt(r.a)}</td><td>{fmt(r.b)}</td>"
        f"<td>{_change(r)}</td>"
        f"<td>{esc(_ci(r.ci95_pct))}</td><td><b>{r.verdict}</b></td><td>{esc(r.method)}</td>"
        f"<td>{_noise(r)}</td>"
        f"<td>{'yes' if r.valid else 'no'}</td></tr>" for r in result.rows)
    broken = "".join(f"<p class=slower>FAIL-ON {esc(b.rule)}: {esc(b.protocol)} {esc(b.wire)} "
                     f"{esc(_level(b, result.mode))} {b.metric} {b.change_pct:+.1f}%</p>" for b in result.broken)
    shared = (f"<p class=slower>Shared machine: {esc('; '.join(result.shared_machine))}. A change may be the "
              "machine's, not the setup's.</p>" if result.shared_machine else "")
    return shell(f"compare: {result.model}", f"{result.model}: B against A", f"""{broken}{shared}
<p>A: <code>{esc(result.a)}</code><br>B: <code>{esc(result.b)}</code></p>
<p>Change is B over A. Intervals are 95%: a Welch t interval on the log of the per-repeat figures when both sides
have two or more repeats (benchmark.repeats), otherwise a bootstrap of {BLOCKS} consecutive time blocks of each run,
widened by the run-to-run noise that one run per side cannot show, estimated from the spread between each run's
sub-windows (the <i>run noise</i> column: the half-width it adds).
A change under the minimum effect ({result.min_effect_pct:g}%) is <i>no change</i> whatever its interval.</p>
{chart_slot("chart-changes", "hover a change for its figures; red: slower, green: faster")}
<table><thead><tr>{''.join(f'<th>{h}</th>' for h in ('protocol', 'payload', 'level', 'metric', 'A', 'B', 'change', '95% CI', 'verdict', 'interval', 'run noise', 'valid'))}</tr></thead>
<tbody>{body}</tbody></table>
""", headline=result.headline, data=json.dumps(chart_data(result), allow_nan=False))
