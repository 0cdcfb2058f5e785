"""`benchmark.thresholds`: k6-style pass/fail rules on a run's figures, parsed once and evaluated after each run.

```yaml
thresholds:
  p99_ms: "< 120"            # every protocol and payload
  p99_ms_upper: "< 150"      # the true p99 is below 150 ms with 99% confidence (order statistics)
  failure_ratio: "< 0.001"
  grpc: {rps: "> 40"}        # gRPC only, any payload
  rest/image_b64:            # one protocol and payload
    p99_ms: ["< 200", "> 1"]
  capacity_rps: "> 30"       # make capacity only
```
Free of the harness's other modules: the schema validates with `parse`, bench and capacity call `evaluate`.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from spec.contract import PAYLOADS

PROTOCOLS = ("rest", "grpc")
METRICS = {"p50_ms": "p50 latency (ms)", "p90_ms": "p90 latency (ms)", "p95_ms": "p95 latency (ms)",
           "p99_ms": "p99 latency (ms)",
           **{f"p{q}_ms_upper": f"upper confidence bound of p{q} (ms; benchmark.slo_confidence, default 99%)"
              for q in (50, 90, 95, 99)},
           "mean_ms": "mean latency (ms)", "max_ms": "slowest request (ms)",
           "rps": "throughput (successful requests/s)", "failure_ratio": "failed / all requests",
           "late_ratio": "open loop: late starts / all requests", "capacity_rps": "make capacity: the capacity found"}
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_EXPRESSION = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Threshold:
    """One rule: `metric op limit` on the runs of `scope` ('all', a protocol, a payload or 'protocol/payload')."""
    scope: str
    metric: str
    op: str
    limit: float
    text: str

    def applies(self, protocol: str, payload: str) -> bool:
        return self.scope in ("all", protocol, payload, f"{protocol}/{payload}")

    def passes(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.limit)

    @property
    def name(self) -> str:
        return (f"{self.scope}: " if self.scope != "all" else "") + f"{self.metric} {self.op} {self.limit:g}"


def expression(scope: str, metric: str, text: Any, metrics: dict = METRICS) -> Threshold:
    """One `metric: "< limit"` rule; ValueError (one line, naming the key) when it is not one."""
    where = f"{metric}" if scope == "all" else f"{scope}.{metric}"
    if metric not in metrics:
        raise ValueError(f"{where}: unknown metric '{metric}'; thresholds can be set on {', '.join(metrics)}")
    match = _EXPRESSION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{where}: {text!r} is not a threshold: write an operator and a number, e.g. \"< 120\" "
                         f"(operators {' '.join(OPERATORS)})")
    op, number, percent = match.groups()
    limit = float(number) / (100.0 if percent else 1.0)
    if percent and not metric.endswith("_ratio"):
        raise ValueError(f"{where}: {text!r}: a percent limit only fits a ratio (failure_ratio, late_ratio)")
    if not math.isfinite(limit):
        raise ValueError(f"{where}: {text!r}: the limit must be a finite number")
    return Threshold(scope, metric, op, limit, text.strip())


def _scope(key: str) -> Optional[str]:
    protocol, _, payload = key.partition("/")
    if payload:
        return key if protocol in PROTOCOLS and payload in PAYLOADS else None
    return key if key in PROTOCOLS or key in PAYLOADS else None


def parse(raw: Optional[dict]) -> tuple[Threshold, ...]:
    """The rules of a `thresholds:` mapping; ValueError (one line, naming the key) when one is malformed."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ValueError("thresholds must be a mapping of metric: \"< limit\" (or of protocol/payload: {metric: ...})")
    rules: list[Threshold] = []
    for key, value in raw.items():
        key = str(key)
        if key in METRICS or _scope(key) is None:
            expressions = value if isinstance(value, list) else [value]
            rules += [expression("all", key, text) for text in expressions]
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{key}: a protocol or payload scope holds metrics, e.g. {key}: {{p99_ms: \"< 100\"}}")
        for metric, given in value.items():
            expressions = given if isinstance(given, list) else [given]
            rules += [expression(key, str(metric), text) for text in expressions]
    return tuple(rules)


def evaluate(rules: Iterable[Threshold], figures: Iterable[dict], capacity: bool = False) -> list[dict]:
    """Each rule against each matching set of figures (a bench run, or a capacity cell at its capacity).

    `figures` rows carry protocol, payload, wire, level and the metric values. A rule whose metric is missing from
    a row (capacity_rps in a bench, late_ratio closed loop) is reported as not evaluated, never as passed.
    """
    rows = list(figures)
    results = []
    for rule in rules:
        matched = [row for row in rows if rule.applies(row["protocol"], row["payload"])]
        if rule.metric == "capacity_rps" and not capacity:
            results.append({"threshold": rule.name, "scope": rule.scope, "metric": rule.metric, "op": rule.op,
                            "limit": rule.limit, "protocol": None, "payload": None, "level": None, "value": None,
                            "passed": None, "note": "not evaluated: capacity_rps is measured by make capacity"})
            continue
        if not matched:
            results.append({"threshold": rule.name, "scope": rule.scope, "metric": rule.metric, "op": rule.op,
                            "limit": rule.limit, "protocol": None, "payload": None, "level": None, "value": None,
                            "passed": None, "note": f"not evaluated: no run of {rule.scope} was measured"})
            continue
        for row in matched:
            value = row.get(rule.metric)
            known = isinstance(value, (int, float)) and math.isfinite(value)
            results.append({"threshold": rule.name, "scope": rule.scope, "metric": rule.metric, "op": rule.op,
                            "limit": rule.limit, "protocol": row["protocol"], "payload": row["payload"],
                            "wire": row.get("wire"), "level": row.get("level"), "value": value if known else None,
                            # a missing figure (no successful request) fails a bound on it: it was not met
                            "passed": rule.passes(value) if known else (None if value is None and
                                                                         rule.metric == "late_ratio" else False),
                            "note": "" if known else "no value measured"})
    return results


def broken(results: Iterable[dict]) -> list[dict]:
    """The evaluated rules that failed."""
    return [r for r in results if r["passed"] is False]
