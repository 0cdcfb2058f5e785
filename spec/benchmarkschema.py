"""The spec's `benchmark:` section: what is sent (images, payloads, signature), how (closed or open loop, levels,
windows, repeats, distributed load), and how runs are judged (validity, settling, the SLO, thresholds)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spec.contract import DEFAULT_PAYLOADS, PAYLOADS
from spec.thresholds import parse
from spec.units import parse_duration, parse_fraction, parse_slo


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = Annotated[float, Field(description="seconds, or a string like '30s', '2m'")]


class ImagesSpec(_Strict):
    directory: Optional[Path] = Field(None, description="JPEG/PNG files to use; null uses the bundled photos")
    resolutions: tuple[tuple[int, int], ...] = Field(
        ((640, 480),), description="[width, height] pairs each image is resized to before encoding")
    count: int = Field(8, ge=1, description="How many distinct images per resolution")
    seed: int = 0
    jpeg_quality: int = Field(90, ge=1, le=100)

    @field_validator("resolutions")
    @classmethod
    def _positive(cls, value: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if not value:
            raise ValueError("list at least one [width, height]")
        for width, height in value:
            if width < 1 or height < 1:
                raise ValueError(f"[{width}, {height}] is not a valid resolution")
        return value


class SloSpec(_Strict):
    """A latency objective: `percentile` of the latency (from the scheduled send time) at most `latency_ms`."""
    percentile: float = Field(gt=0, lt=100)
    latency_ms: float = Field(gt=0)

    @property
    def key(self) -> str:
        """The summary field holding this percentile ('p99_ms'; 'p99.9_ms' for fractional percentiles)."""
        return f"p{self.percentile:g}_ms"

    def __str__(self) -> str:
        return f"p{self.percentile:g} <= {self.latency_ms:g} ms"


class BenchmarkSpec(_Strict):
    users: tuple[Annotated[int, Field(ge=1)], ...] = (1, 4, 16)
    duration: Duration = Field(20.0, description="Each run measures at least this long, judged in three sub-windows "
                               "of a third of it each")
    max_duration: Optional[Duration] = Field(
        None, description="A run whose last three sub-windows disagree (benchmark.stability_percent, beyond sampling "
        "noise) goes on measuring one sub-window at a time, up to this; its figures come from the last span that "
        "agrees. Default: 3 x duration (six more sub-windows: a run still moving after that is drifting, not noisy, "
        "and a sweep never takes more than three times its nominal length)")
    warmup: Duration = 5.0
    spawn_rate: float = Field(50.0, gt=0)
    protocols: tuple[Literal["rest", "grpc"], ...] = ("rest", "grpc")
    payloads: tuple[Literal[PAYLOADS], ...] = DEFAULT_PAYLOADS
    signature: Optional[str] = Field(
        None, description="A SavedModel served as is with signatures of its own: the predict signature to benchmark "
        "(default serving_default); its image input is fed from the photos, every other input from extra_inputs")
    extra_inputs: dict[str, Union[int, float, str, list]] = Field(
        default_factory=dict, description="Inputs of that signature besides the image: a value (number or list), "
        "or image_height / image_width (the size of the image sent)")
    batch_size: int = Field(1, ge=1, le=256, description="Images per request")
    grpc_client: Literal["lean", "grpcio"] = Field(
        "lean", description="gRPC users' client: lean (pre-rendered HTTP/2 frames, loadtests/drive/leangrpc.py: a fraction "
        "of grpcio's CPU per call, so the generator adds less to each figure) or grpcio (the official stub, to "
        "cross-check a result or for a server that needs TLS)")
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    failure_threshold: float = Field(0.01, ge=0, le=1, description="Max failure ratio before bench exits non-zero")
    output_dir: Path = Field(Path("../reports"), description="Reports go to <output_dir>/<name>/<timestamp>/")
    # open loop: requests start on a schedule, whether or not earlier ones have answered
    mode: Literal["closed", "open"] = Field(
        "closed", description="closed: each user sends when its last answer arrives; open: requests start at "
        "scheduled times (benchmark.rates), latency measured from the scheduled time")
    rates: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        (10.0, 20.0, 40.0), description="Offered load in requests per second, one run per rate (open mode)")
    arrival: Literal["poisson", "constant"] = Field(
        "poisson", description="Open-loop arrivals: poisson (exponential gaps, seeded from images.seed) or constant")
    max_in_flight: int = Field(1000, ge=1, description="Cap on requests in flight in open mode (split over the "
                               "load-generating processes); a request waiting for a free slot starts late")
    late_tolerance: Duration = Field(0.005, description="An open-loop request starting more than this after its "
                                     "scheduled time is late")
    drain: Duration = Field(10.0, description="Open mode: how long after the window the requests scheduled in it "
                            "may still answer; any still unanswered then count as failures")
    # validity: what a run must show before its numbers are reported as trustworthy
    slo: Optional[SloSpec] = Field(None, description="Latency objective, 'p99:100ms': what capacity searches for, "
                                   "and the percentile every run's validity is judged on (default p50)")
    stability_percent: float = Field(10.0, gt=0, description="Throughput and the judged percentile over the last "
                                     "three sub-windows must stay within this % of their mean")
    min_duration: Duration = Field(5.0, description="A run measuring less than this is invalid")
    slo_confidence: Optional[float] = Field(
        None, gt=0.5, lt=1, description="Judge the SLO on the percentile's upper confidence bound at this level "
        "(0.99: the true p99 is below the bound with 99% confidence, from the order statistics) instead of the "
        "measured percentile: capacity then only counts a rate whose bound meets the SLO. Every run reports the bound "
        "at this level (default 0.99) as <percentile>_ms_upper")
    min_requests: int = Field(100, ge=1, description="A run with fewer requests in its window is invalid")
    min_tail_samples: int = Field(10, ge=1, description="A percentile is supported when at least this many samples "
                                  "lie above it (p99 needs 1000 requests at the default)")
    max_late_ratio: float = Field(0.01, ge=0, le=1, description="Open mode: more late starts than this and the "
                                  "generator could not keep the schedule (invalid)")
    precision: float = Field(0.05, gt=0, lt=1, description="Capacity search: stop bisecting when the bracket is "
                             "this close (5% or 0.05)")
    accept_uninformative_answers: bool = Field(
        False, description="Benchmark even when the model gives the same answer for every benchmark image (so no "
        "answer check can fail): the report still says so, but the exit code is not 5")
    repeats: int = Field(1, ge=1, le=20, description="Run the whole sweep this many times, interleaved (every "
                         "level once, then again): make compare uses the variation between repeats for its intervals")
    thresholds: Optional[dict[str, Any]] = Field(
        None, description="k6-style pass/fail rules evaluated after each bench or capacity run, e.g. p99_ms: '< 120', "
        "failure_ratio: '< 0.001', grpc: {rps: '> 40'}, rest/image_b64: {p99_ms: '< 200'}, capacity_rps: '> 30'; "
        "a broken one makes the command exit 6 after the report")
    results_db: str = Field("results.sqlite", description="Where every bench, capacity and tune result is recorded: "
                            "a SQLite file (relative to output_dir) or a database URL (postgresql://user@host/db); "
                            "'off' records nothing; the environment variable TFSB_RESULTS_DB overrides it")
    floor: bool = Field(False, description="Also export the protocol floor (the same input signatures and "
                        "preprocessing, an almost free head), run it through the same sweep and report it beside "
                        "the model: what the protocol and codec cost alone")

    @field_validator("duration", "warmup", "late_tolerance", "drain", "min_duration", "max_duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _max_duration(self) -> "BenchmarkSpec":
        if self.max_duration is not None and self.max_duration < self.duration:
            raise ValueError(f"max_duration ({self.max_duration:g} s) is shorter than duration ({self.duration:g} s): "
                             "a run measures at least its duration; set max_duration to duration or more")
        return self

    @property
    def longest(self) -> float:
        """The most a run measures: max_duration, or 3 x duration."""
        return self.max_duration if self.max_duration is not None else 3.0 * self.duration

    @field_validator("slo", mode="before")
    @classmethod
    def _slo(cls, value: Any) -> Any:
        return None if value is None or isinstance(value, SloSpec) else parse_slo(value)

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: Optional[dict]) -> Optional[dict]:
        parse(value)  # a malformed rule is a spec error naming its key
        return value

    @property
    def threshold_rules(self):
        """The parsed thresholds (spec.thresholds.Threshold), in the order written."""
        return parse(self.thresholds)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value: Any) -> float:
        return parse_fraction(value)

    @property
    def judged(self) -> str:
        """The percentile field every run's stability and support is judged on: the SLO's, else p50."""
        return self.slo.key if self.slo else "p50_ms"

    @field_validator("extra_inputs")
    @classmethod
    def _derived(cls, value: dict) -> dict:
        for alias, given in value.items():
            if isinstance(given, str) and given not in ("image_height", "image_width"):
                raise ValueError(f"{alias}: '{given}' is neither a number, a list nor image_height / image_width")
        return value

    @field_validator("users", "protocols", "payloads", "rates")
    @classmethod
    def _non_empty(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if not value:
            raise ValueError("the list cannot be empty")
        return value
