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
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from spec.thresholds import Threshold, expression
from spec.units import parse_duration, parse_fraction, parse_mebibytes

PARTS = ("cold_start", "swap", "density")
METRICS = {
    "ports_open_s": "cold start: seconds from starting the server to both ports accepting connections",
    "available_s": "cold start: seconds from starting the server to GetModelStatus AVAILABLE",
    "first_answer_s": "cold start: seconds from starting the server to the first correct answer",
    "slow_requests": "cold start: how many of the first requests came before latency settled to the steady p50",
    "first_request_ms": "cold start: latency of the first request after AVAILABLE (ms)",
    "memory_mb": "cold start: the server's memory at the peak of the first requests (MiB)",
    "copy_to_answer_s": "swap: seconds from the new version's copy to its first answer",
    "swap_failures": "swap: failed requests over every served model",
    "swap_spike_ms": "swap: the longest spike, over every served model (ms of buckets over 2x the baseline p99)",
    "swap_peak_p99_ms": "swap: the highest p99 of a bucket after the copy, over every served model (ms)",
    "density_models": "density: how many copies fit (memory limit, SLO and no failure)",
    "memory_per_copy_mb": "density: what one more copy costs in memory under load (MiB)",
}
PART_OF = {**{m: "cold_start" for m in ("ports_open_s", "available_s", "first_answer_s", "slow_requests",
                                         "first_request_ms", "memory_mb")},
           **{m: "swap" for m in ("copy_to_answer_s", "swap_failures", "swap_spike_ms", "swap_peak_p99_ms")},
           "density_models": "density", "memory_per_copy_mb": "density"}


def _seconds(value: Any) -> float:
    seconds = parse_duration(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a positive duration, e.g. 10m")
    return seconds


Seconds = Annotated[float, BeforeValidator(_seconds)]


def _rate(value: Any) -> Union[float, str]:
    """A rate in req/s, or 'N%' of the capacity make capacity found."""
    if isinstance(value, str) and value.strip().endswith("%"):
        fraction = parse_fraction(value)
        if not 0 < fraction <= 10:
            raise ValueError(f"{value!r}: a share of the capacity is above 0% (e.g. 50%)")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("a rate is a number of requests per second, or a share of the capacity such as 50%")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate: write requests per second (e.g. 40) or a share of the capacity "
                         "make capacity found (e.g. 50%)") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError("a rate is a positive number of requests per second")
    return rate


Rate = Annotated[Union[float, str], BeforeValidator(_rate)]


# the server flags a swap setting may change, bounded as serving.* bounds them (spec/schema.py uses these too)
LoadThreads = Annotated[int, Field(ge=0, le=64)]
PollSeconds = Annotated[int, Field(ge=1, le=86400)]


class SwapSetting(BaseModel):
    """One more way to run the swap, compared with the serving section as written: server flags, and whether the
    new version carries the export's warmup records. A key left out keeps the spec's value."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Optional[str] = Field(None, min_length=1, max_length=60, description="A label for the report (default: "
                                "the settings, e.g. num_load_threads=4)")
    num_load_threads: Optional[LoadThreads] = Field(None, description="--num_load_threads of the server")
    file_system_poll_wait_seconds: Optional[PollSeconds] = Field(None, description="The server's version poll "
                                                                 "period (--file_system_poll_wait_seconds)")
    warmup: Optional[bool] = Field(None, description="false: the new version arrives without the export's warmup "
                                   "records (assets.extra/tf_serving_warmup_requests); true: with them")

    @model_validator(mode="after")
    def _something(self) -> "SwapSetting":
        if self.changes() == {}:
            raise ValueError("a setting to compare changes num_load_threads, file_system_poll_wait_seconds or "
                             "warmup")
        return self

    def changes(self) -> dict:
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}

    @property
    def label(self) -> str:
        return self.name or ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                      for k, v in self.changes().items())


def parse_settings(text: str) -> list[dict]:
    """`--swap-compare` / SWAP_COMPARE: settings separated by ';', each key=value[,key=value], e.g.
    'num_load_threads=4;warmup=false;file_system_poll_wait_seconds=5'."""
    settings = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        setting: dict = {}
        for pair in (p.strip() for p in part.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"{pair!r} is not key=value (e.g. num_load_threads=4)")
            if key.strip() not in SwapSetting.model_fields:
                raise ValueError(f"{key.strip()!r} is not a setting the swap compares; the settings: "
                                 f"{', '.join(SwapSetting.model_fields)}")
            setting[key.strip()] = value.strip()
        settings.append(setting)
    return settings


class SwapSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: Rate = Field(20.0, description="Open-loop requests per second on each served model during the swap, or a "
                       "share of the gRPC capacity the latest make capacity found for this model, e.g. 50%")
    baseline: Seconds = Field(3.0, description="Load before the new version is copied in (the baseline latency)")
    after: Seconds = Field(2.0, description="Load after the new version answers, and again after the old version's "
                           "directory is removed")
    bucket: Seconds = Field(0.25, description="The width of each point of the latency-against-time series")
    timeout: Seconds = Field(120.0, description="How long the new version may take to answer after the copy")
    compare: tuple[SwapSetting, ...] = Field((), max_length=8, description="Settings to run the swap with too, "
                                             "each on a fresh server, compared with the spec's own: e.g. "
                                             "[{num_load_threads: 4}, {warmup: false}, "
                                             "{file_system_poll_wait_seconds: 5}]")

    @field_validator("compare")
    @classmethod
    def _distinct(cls, value: tuple) -> tuple:
        labels = [s.label for s in value]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} is compared twice; give each setting once (or a name)")
        return value


class DensitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_models: int = Field(4, ge=1, le=64, description="Copies of the model served at once, 1, 2, ... up to this")
    memory_limit: Optional[float] = Field(None, description="Stop adding copies once the server's memory is above "
                                          "this, e.g. 2GiB (the answer says how many fit under it)")
    rate: float = Field(20.0, gt=0, description="Open-loop requests per second at each step, spread over the "
                        "loaded copies")
    duration: Seconds = Field(4.0, description="How long each step is loaded")

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Optional[float]:
        return None if value is None else parse_mebibytes(value)


def _checked(raw: Optional[dict]) -> Optional[dict]:
    """`raw` unchanged once every rule in it parses (a malformed rule is a spec error naming its key)."""
    parse(raw)
    return raw


class LifecycleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    parts: tuple[Literal["cold_start", "swap", "density"], ...] = Field(
        PARTS, min_length=1, description="What make lifecycle measures: cold_start (a fresh server, with the "
        "export's warmup records and with a copy of the export without them), swap (a new version delivered under "
        "open-loop load), density (1, 2, ... copies of the model in one server)")
    repeats: int = Field(3, ge=1, le=50, description="Fresh starts of each variant; figures are their medians")
    first_requests: int = Field(200, ge=10, le=100_000, description="Requests answered one at a time right after "
                                "the model is AVAILABLE: how long do they stay slow?")
    steady_requests: int = Field(200, ge=20, le=100_000, description="Requests after those, one at a time: their "
                                 "p50 is the steady latency the first ones are held against")
    slow_factor: float = Field(1.5, gt=1, le=100, description="A first request is slow while the median of the "
                               "next ten is above this times the steady p50")
    start_timeout: Seconds = Field(600.0, description="How long a start may take to its first correct answer, "
                                   "e.g. 10m, before it is a failure")
    swap: SwapSpec = Field(default_factory=SwapSpec)
    density: DensitySpec = Field(default_factory=DensitySpec)
    thresholds: Annotated[Optional[dict[str, Any]], AfterValidator(_checked)] = Field(
        None, description="Pass/fail rules on the cold start of the export as it is (the median of its starts), "
        f"e.g. {{available_s: \"< 30\"}}; metrics: {', '.join(METRICS)}")

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


def evaluate(rules: tuple[Threshold, ...], figures: dict, parts: tuple[str, ...] = PARTS) -> list[dict]:
    """Each rule against the figures of the parts that ran (a missing figure fails a bound on it: it was not met;
    a rule on a part that did not run is not evaluated)."""
    results = []
    for rule in rules:
        if PART_OF[rule.metric] not in parts:
            results.append({"threshold": rule.name, "metric": rule.metric, "op": rule.op, "limit": rule.limit,
                            "value": None, "passed": None,
                            "note": f"not evaluated: the {PART_OF[rule.metric]} part did not run"})
            continue
        value = figures.get(rule.metric)
        known = isinstance(value, (int, float)) and math.isfinite(value)
        results.append({"threshold": rule.name, "metric": rule.metric, "op": rule.op, "limit": rule.limit,
                        "value": value if known else None, "passed": rule.passes(value) if known else False,
                        "note": "" if known else "no value measured"})
    return results
