"""Compare's result in words: the headline, the terminal table and the self-contained compare.html (a forest plot
of the changes with their intervals, then the table)."""
from __future__ import annotations

import html
import math
from typing import Sequence

from loadtests.analyze.intervals import BLOCKS
from loadtests.report import fmt
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


def _forest(rows: Sequence[CompareRow]) -> str:
    """An inline SVG: each row's change and interval against zero and the minimum effect."""
    shown = [r for r in rows if r.change_pct is not None]
    if not shown:
        return ""
    bound = max([abs(x) for r in shown for x in ([r.change_pct] + list(r.ci95_pct or ()))] + [10.0]) * 1.1
    width, left, row_h = 760, 300, 18
    height = row_h * len(shown) + 30

    def x(value: float) -> float:
        return left + (value + bound) / (2 * bound) * (width - left - 20)
    marks = [f"<line x1='{x(0):.1f}' y1='0' x2='{x(0):.1f}' y2='{height - 20}' stroke='#888'/>"]
    for i, r in enumerate(shown):
        y = 14 + i * row_h
        colour = {"slower": "#b00020", "faster": "#1b7f3b"}.get(r.verdict, "#555")
        label = html.escape(f"{r.protocol} {r.wire} {r.level:g} {r.metric}")
        marks.append(f"<text x='4' y='{y + 4}' font-size='11'>{label}</text>")
        if r.ci95_pct:
            marks.append(f"<line x1='{x(r.ci95_pct[0]):.1f}' y1='{y}' x2='{x(r.ci95_pct[1]):.1f}' y2='{y}' "
                         f"stroke='{colour}' stroke-width='2'/>")
        marks.append(f"<circle cx='{x(r.change_pct):.1f}' cy='{y}' r='4' fill='{colour}'><title>"
                     f"{r.change_pct:+.1f}% {html.escape(_ci(r.ci95_pct))}: {r.verdict}</title></circle>")
    marks.append(f"<text x='{x(-bound):.1f}' y='{height - 4}' font-size='10'>{-bound:.0f}%</text>"
                 f"<text x='{x(0) - 4:.1f}' y='{height - 4}' font-size='10'>0</text>"
                 f"<text x='{x(bound) - 30:.1f}' y='{height - 4}' font-size='10'>+{bound:.0f}%</text>")
    return f"<svg width='{width}' height='{height}' role='img' aria-label='changes'>{''.join(marks)}</svg>"


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
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>compare: {esc(result.model)}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2em; }} table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }} th {{ background: #f3f3f3; }}
.slower {{ color: #b00020; }} .faster {{ color: #1b7f3b; }}</style></head><body>
<h1>{esc(result.model)}: B against A</h1><p><b>{esc(result.headline)}</b></p>{broken}{shared}
<p>A: <code>{esc(result.a)}</code><br>B: <code>{esc(result.b)}</code></p>
<p>Change is B over A. Intervals are 95%: a Welch t interval on the log of the per-repeat figures when both sides
have two or more repeats (benchmark.repeats), otherwise a bootstrap of {BLOCKS} consecutive time blocks of each run,
widened by the run-to-run noise that one run per side cannot show, estimated from the spread between each run's
sub-windows (the <i>run noise</i> column: the half-width it adds).
A change under the minimum effect ({result.min_effect_pct:g}%) is <i>no change</i> whatever its interval.</p>
{_forest(result.rows)}
<table><thead><tr>{''.join(f'<th>{h}</th>' for h in ('protocol', 'payload', 'level', 'metric', 'A', 'B', 'change', '95% CI', 'verdict', 'interval', 'run noise', 'valid'))}</tr></thead>
<tbody>{body}</tbody></table></body></html>
"""
