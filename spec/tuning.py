"""The spec's `tune:` section: what `make tune` searches and how long it may take.

Every knob is a list of candidate values. A knob left out (null) gets candidates derived from the model and the
machine when the search starts (loadtests.measure.tunespace.derive); a knob given one value is held at it.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spec.units import parse_duration, parse_fraction

PositiveInts = Optional[tuple[int, ...]]
ThreadCounts = Optional[tuple[Union[int, Literal["sized"]], ...]]


class TuneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["quick", "grid"] = Field(
        "quick", description="quick: coordinate search from the baseline, pruning configurations whose first probe "
        "is already far below the best; grid: every combination (until the budget)")
    budget: float = Field(1200.0, description="Wall-clock budget of the whole search, e.g. 20m; the search stops "
                          "before a configuration it expects to overrun it")
    min_gain: float = Field(0.10, ge=0, lt=10, description="A configuration replaces the best only when its "
                            "capacity is higher by more than this fraction (run-to-run noise is not a gain); never less than "
                            "benchmark.precision, the resolution of a capacity search")
    prune_below: float = Field(0.7, gt=0, le=1, description="quick: a configuration whose first probe, at this "
                               "fraction of the best capacity so far, misses the SLO is pruned")
    batching: tuple[bool, ...] = Field((False, True), description="Batching off and/or on")
    max_batch_size: PositiveInts = Field(None, description="Default: 4, 8, 16, 32 (not below the request batch)")
    batch_timeout_micros: Optional[tuple[int, ...]] = Field(
        None, description="Default: 0, 1000, 2000, 5000, 10000 up to a quarter of the SLO latency")
    num_batch_threads: PositiveInts = Field(None, description="Default: 1 and the number of CPUs")
    max_enqueued_batches: PositiveInts = Field(None, description="Default: serving.batching.max_enqueued_batches")
    allowed_batch_sizes: tuple[Literal["any", "powers_of_two"], ...] = Field(
        ("any",), description="any: batches of any size up to max_batch_size; powers_of_two: padded to 1, 2, 4, ..")
    intra_op_parallelism: Optional[tuple[int, ...]] = Field(None, description="Default: 0 (TensorFlow decides), 1 "
                                                            "and the number of CPUs")
    inter_op_parallelism: Optional[tuple[int, ...]] = Field(None, description="Default: as intra_op_parallelism")
    rest_api_num_threads: ThreadCounts = Field(
        None, description="Default: 0 (the server's 4 x CPUs) and 'sized': twice the requests in flight at the "
        "baseline's capacity (rate x SLO latency); REST cells only")
    grpc_max_threads: ThreadCounts = Field(None, description="As rest_api_num_threads, for gRPC cells")
    image: Optional[tuple[Literal["cpu", "gpu", "cpu-optimized", "embedded"], ...]] = Field(
        None, description="docker backend: image variants to try (default: serving.image only, since cpu-optimized "
        "compiles TF Serving from source)")

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError("the budget must be positive, e.g. 20m")
        return seconds

    @field_validator("min_gain", "prune_below", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return parse_fraction(value)

    @field_validator("batching", "max_batch_size", "batch_timeout_micros", "num_batch_threads",
                     "max_enqueued_batches", "allowed_batch_sizes", "intra_op_parallelism", "inter_op_parallelism",
                     "rest_api_num_threads", "grpc_max_threads", "image")
    @classmethod
    def _candidates(cls, value: Optional[tuple], info) -> Optional[tuple]:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one candidate (or leave the key out for the derived defaults)")
        if len(set(value)) != len(value):
            raise ValueError("a candidate is listed more than once")
        floor = 0 if info.field_name in ("batch_timeout_micros", "intra_op_parallelism", "inter_op_parallelism",
                                         "rest_api_num_threads", "grpc_max_threads") else 1
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool) and item < floor:
                raise ValueError(f"{item} is below {floor}")
        return value


BATCHING_KNOBS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches",
                  "allowed_batch_sizes")
SERVING_KNOBS = ("intra_op_parallelism", "inter_op_parallelism", "rest_api_num_threads", "grpc_max_threads")
KNOBS = ("batching", *BATCHING_KNOBS, *SERVING_KNOBS, "image")


def allowed_sizes(symbol: str, max_batch_size: int) -> tuple[int, ...]:
    """allowed_batch_sizes for a symbolic choice: () for any size, else 1, 2, 4, ... ending at max_batch_size."""
    if symbol == "any":
        return ()
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def config_of(serving) -> dict:
    """The tunable configuration of a ServingSpec, as a tune trial records it (batching knobs only when on)."""
    batching = serving.batching
    config: dict = {"batching": batching.enabled}
    if batching.enabled:
        config.update(max_batch_size=batching.max_batch_size, batch_timeout_micros=batching.batch_timeout_micros,
                      num_batch_threads=batching.num_batch_threads,
                      max_enqueued_batches=batching.max_enqueued_batches,
                      allowed_batch_sizes="any" if not batching.allowed_batch_sizes else (
                          "powers_of_two" if batching.allowed_batch_sizes == allowed_sizes(
                              "powers_of_two", batching.max_batch_size) else list(batching.allowed_batch_sizes)))
    config.update({knob: getattr(serving, knob) for knob in SERVING_KNOBS})
    config["image"] = serving.image
    return config


def apply_config(serving, config: dict):
    """`serving` (a ServingSpec) with a tune configuration applied, validated like the spec file."""
    batching = serving.batching
    if "batching" in config:
        changes: dict = {"enabled": bool(config["batching"])}
        for knob in BATCHING_KNOBS[:-1]:
            if knob in config:
                changes[knob] = int(config[knob])
        size = changes.get("max_batch_size", batching.max_batch_size)
        symbol = config.get("allowed_batch_sizes", "any")
        changes["allowed_batch_sizes"] = tuple(symbol) if isinstance(symbol, list) else allowed_sizes(symbol, size)
        batching = type(batching).model_validate({**batching.model_dump(), **changes})
    values = {**serving.model_dump(), "batching": batching.model_dump()}
    values.update({knob: int(config[knob]) for knob in SERVING_KNOBS if knob in config})
    if config.get("image"):
        values["image"] = config["image"]
    return type(serving).model_validate(values)
