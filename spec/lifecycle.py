"""The spec's `lifecycle:` section: what `make lifecycle` measures around serving (the server starting cold, with and
without the export's warmup records) and the thresholds that gate it.

```yaml
lifecycle:
  repeats: 3                # fresh starts of each variant
  first_requests: 200       # answered one at a time right after the model is AVAILABLE
  thresholds:
    available_s: "< 30"     # from start to GetModelStatus AVAILABLE (the export as it is, median of the starts)
    first_answer_s: "< 35"
```
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from spec.thresholds import Threshold, expression
from spec.units import parse_duration

PARTS = ("cold_start",)
METRICS = {
    "ports_open_s": "cold start: seconds from starting the server to both ports accepting connections",
    "available_s": "cold start: seconds from starting the server to GetModelStatus AVAILABLE",
    "first_answer_s": "cold start: seconds from starting the server to the first correct answer",
    "slow_requests": "cold start: how many of the first requests came before latency settled to the steady p50",
    "first_request_ms": "cold start: latency of the first request after AVAILABLE (ms)",
    "memory_mb": "cold start: the server's memory at the peak of the first requests (MiB)",
}


def _checked(raw: Optional[dict]) -> Optional[dict]:
    """`raw` unchanged once every rule in it parses (a malformed rule is a spec error naming its key)."""
    parse(raw)
    return raw


class LifecycleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    parts: tuple[Literal["cold_start"], ...] = Field(
        PARTS, min_length=1, description="What make lifecycle measures: cold_start (a fresh server, with the "
        "export's warmup records and with a copy of the export without them)")
    repeats: int = Field(3, ge=1, le=50, description="Fresh starts of each variant; figures are their medians")
    first_requests: int = Field(200, ge=10, le=100_000, description="Requests answered one at a time right after "
                                "the model is AVAILABLE: how long do they stay slow?")
    steady_requests: int = Field(200, ge=20, le=100_000, description="Requests after those, one at a time: their "
                                 "p50 is the steady latency the first ones are held against")
    slow_factor: float = Field(1.5, gt=1, le=100, description="A first request is slow while the median of the "
                               "next ten is above this times the steady p50")
    start_timeout: float = Field(600.0, description="How long a start may take to its first correct answer, "
                                 "e.g. 10m, before it is a failure")
    thresholds: Annotated[Optional[dict[str, Any]], AfterValidator(_checked)] = Field(
        None, description="Pass/fail rules on the cold start of the export as it is (the median of its starts), "
        f"e.g. {{available_s: \"< 30\"}}; metrics: {', '.join(METRICS)}")

    @field_validator("start_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError("must be a positive duration, e.g. 10m")
        return seconds

    @property
    def threshold_rules(self) -> tuple[Threshold, ...]:
        return parse(self.thresholds)


def parse(raw: Optional[dict]) -> tuple[Threshold, ...]:
    """The rules of `lifecycle.thresholds`: metric: "< limit" (or a list of them)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ValueError("thresholds must be a mapping of metric: \"< limit\", e.g. available_s: \"< 30\"")
    rules = []
    for metric, given in raw.items():
        for text in given if isinstance(given, list) else [given]:
            rules.append(expression("all", str(metric), text, METRICS))
    return tuple(rules)


def evaluate(rules: tuple[Threshold, ...], figures: dict) -> list[dict]:
    """Each rule against the figures (a missing figure fails a bound on it: it was not met)."""
    results = []
    for rule in rules:
        value = figures.get(rule.metric)
        known = isinstance(value, (int, float)) and math.isfinite(value)
        results.append({"threshold": rule.name, "metric": rule.metric, "op": rule.op, "limit": rule.limit,
                        "value": value if known else None, "passed": rule.passes(value) if known else False,
                        "note": "" if known else "no value measured"})
    return results
