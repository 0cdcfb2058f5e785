"""A run's key figures, once per (protocol, payload, level): repeats of one level folded into their median.

`benchmark.repeats` runs the whole sweep several times, interleaved; summary.json keeps every repeat as its own
run (with `repeat`), and the terminal table, the plots, the thresholds and the history use these folded rows.
"""
from __future__ import annotations

import statistics
from typing import Iterable, Sequence

# the figures folded over repeats (every other field is the first repeat's)
FOLDED = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms", "rps", "failure_ratio", "late_ratio",
          "service_p50_ms", "service_p99_ms", "generator_cpu_percent", "server_cpu_percent")
# upper confidence bounds fold into the largest: a median of bounds is no bound at the stated confidence
UPPER = ("p50_ms_upper", "p90_ms_upper", "p95_ms_upper", "p99_ms_upper")


def cell_key(run: dict) -> tuple[str, str, float]:
    """What makes two runs comparable: protocol, payload (as sent over the wire) and level."""
    return run["protocol"], run["payload"], float(run["level"])


def grouped(runs: Iterable[dict]) -> dict[tuple[str, str, float], list[dict]]:
    """The runs of each (protocol, payload, level), in the order measured."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault(cell_key(r), []).append(r)
    return groups


def _median(values: Sequence) -> object:
    known = [v for v in values if isinstance(v, (int, float)) and v == v]
    return statistics.median(known) if known else values[0]


def folded(runs: Sequence[dict]) -> list[dict]:
    """One row per (protocol, payload, level): the median of each figure over its repeats, `repeats` counted,
    `valid` only when every repeat was; rows in the order their first repeat was measured."""
    rows = []
    for group in grouped(runs).values():
        if len(group) == 1:
            rows.append({**group[0], "repeats": 1})
            continue
        row = {**group[0], **{k: _median([r.get(k) for r in group]) for k in FOLDED if k in group[0]}}
        for key in UPPER:
            bounds = [r.get(key) for r in group]
            if key in group[0]:
                row[key] = None if None in bounds else max(bounds)
        row["repeats"] = len(group)
        row["valid"] = all(r["valid"] for r in group)
        row["invalid_reasons"] = [f"repeat {r.get('repeat', i + 1)}: {reason}" for i, r in enumerate(group)
                                  for reason in r["invalid_reasons"]]
        row["requests"] = sum(r["requests"] for r in group)
        row["failures"] = sum(r["failures"] for r in group)
        rows.append(row)
    return rows


def threshold_rows(summary: dict) -> list[dict]:
    """What the thresholds are judged on: each folded bench run, or for capacity each cell at its capacity."""
    if summary.get("capacity") is None:
        return folded(summary["runs"])
    rows = []
    for result in summary["capacity"]:
        at = [r for r in summary["runs"] if r["protocol"] == result["protocol"] and r["payload"] == result["payload"]
              and r["mode"] == "open" and r["offered_rps"] == result["capacity_rps"]]
        base = at[-1] if at else {"protocol": result["protocol"], "payload": result["payload"],
                                  "wire": result["wire"]}
        rows.append({**base, "level": result["capacity_rps"], "capacity_rps": result["capacity_rps"]})
    return rows
