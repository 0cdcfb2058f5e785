"""The results history in the terminal (one line per result and protocol/payload) and as history.png."""
from __future__ import annotations

from loadtests.analyze.resultsdb import key_figures


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[dict]) -> str:
    """The terminal table: one line per result and protocol/payload, oldest first."""
    lines = [f"{'recorded (UTC)':20} {'kind':8} {'commit':12} {'signature':12} {'serving':10} {'backend':8} "
             f"{'protocol payload':22} {'p50 ms':>8} {'p99 ms':>8} {'max rps':>8} {'capacity':>8}  valid"]
    for result in results:
        head = (f"{result['recorded_at'][:19].replace('T', ' '):20} {result['kind']:8} "
                f"{(result['git_commit'] or '?')[:12]:12} {(result['model_signature_sha256'] or '?')[:12]:12} "
                f"{(result['serving_version'] or '?')[:10]:10} {(result['backend'] or '?'):8} ")
        if result["kind"] == "lifecycle":  # no per-cell figures: its headline
            lines.append(head + (result.get("note") or ""))
            continue
        figures = key_figures(result) or [{"cell": "(no figures)", "p50_ms": None, "p99_ms": None,
                                           "max_rps": None, "capacity_rps": None, "valid": result["valid"]}]
        for fig in figures:
            lines.append(head + f"{fig['cell']:22} {_cell(fig['p50_ms']):>8} {_cell(fig['p99_ms']):>8} "
                         f"{_cell(fig['max_rps'], 1):>8} {_cell(fig['capacity_rps'], 1):>8}  "
                         f"{'yes' if fig['valid'] and result['valid'] is not False else 'no'}")
            head = " " * len(head)
    return "\n".join(lines)
