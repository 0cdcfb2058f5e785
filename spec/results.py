"""The results the harness writes, typed: a run, a bench summary (summary.json), a capacity result (capacity.json),
a tune result (tune.json), a compare result (compare.json) and a lifecycle result (lifecycle.json).

Each is a frozen dataclass. `from_dict(data, where)` reads what a file holds: it refuses a newer schema_version
(spec/resultschema.py) and a missing or mistyped field in one line that names the file and the field; `to_dict()`
gives the JSON as it is written, with this harness's schema_version first. The fields typed here are the ones
other modules read; a result's other fields (a run's breakdown, a trial's cells, ...) travel unchanged in `more`,
so a file read and written again loses nothing, and every JSON field users script against keeps its name.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from spec.errors import UsageError
from spec.resultschema import FIELD as SCHEMA_FIELD, SCHEMA_VERSION, version_of

_NONE = type(None)
NOT_OURS = ": the file was not written by tfsb, or was edited by hand"
_OWN = ("more", "absent", "order")  # a Record's own fields, not the JSON's


def optional_field():
    """A field some files leave out: None when absent, and left out again when written while None."""
    return field(default=None, metadata={"absent_when_none": True})


@dataclass(frozen=True, kw_only=True)
class Record:
    """A typed part of a result: its named fields, and `more` (every other field of the JSON object, in order).
    `absent`: the named fields the object read did not have, left out again when written while still at their
    default; `order`: the object's keys in the order read, the order they are written in again."""
    more: Mapping[str, Any] = field(default_factory=dict)
    absent: frozenset = field(default=frozenset(), repr=False, compare=False)
    order: tuple = field(default=(), repr=False, compare=False)

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _OWN}

    @classmethod
    def from_dict(cls, data: Any, where: str):
        """The record in `data` (a JSON object); UsageError naming `where` and the field when it is not one."""
        if not isinstance(data, Mapping):
            raise UsageError(f"{where}: {_kind(data)}, not an object{NOT_OURS}")
        values, hints = {}, cls._hints()
        for spec in dataclasses.fields(cls):
            if spec.name in _OWN:
                continue
            if spec.name in data:
                values[spec.name] = _read(data[spec.name], hints[spec.name], f"{where}: {spec.name}")
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise UsageError(f"{where}: no {spec.name!r}{NOT_OURS}")
        more = {k: v for k, v in data.items() if k not in hints and k != SCHEMA_FIELD}
        return cls(**values, more=more, absent=frozenset(name for name in hints if name not in data),
                   order=tuple(key for key in data if key != SCHEMA_FIELD))

    @classmethod
    def made(cls, data: Mapping[str, Any]):
        """The record of a dict this harness built (a run entry, a summary): a field that does not fit is a defect
        here, not a user's mistake, so it is a TypeError."""
        try:
            return cls.from_dict(data, f"internal: the {cls.__name__} built")
        except UsageError as exc:
            raise TypeError(str(exc).replace(NOT_OURS, "")) from None

    def to_dict(self) -> dict:
        """The JSON object, its keys in the order read (a record made in code: the named fields, then `more`)."""
        named = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                 if f.name not in _OWN and not self._left_out(f)}
        every = {**named, **{k: v for k, v in self.more.items() if k not in named}}
        return {**{k: every[k] for k in self.order if k in every}, **every}

    def _left_out(self, spec: dataclasses.Field) -> bool:
        """Whether a named field stays out of the JSON: an optional_field while None, or a field the object read
        did not have while it still holds its default."""
        value = getattr(self, spec.name)
        if spec.metadata.get("absent_when_none") and value is None:
            return True
        if spec.name not in self.absent:
            return False
        default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        return value == default

    def get(self, name: str, default: Any = None) -> Any:
        """A field by its JSON name, typed or not (for readers of fields this module does not name)."""
        if name not in _OWN and name in {f.name for f in dataclasses.fields(self)}:
            value = getattr(self, name)
            return default if value is None and name in self.absent else value
        return self.more.get(name, default)


@dataclass(frozen=True, kw_only=True)
class Document(Record):
    """A whole result file: read after its schema_version is checked, written with this harness's."""

    @classmethod
    def from_dict(cls, data: Any, where: str):
        if isinstance(data, Mapping):
            version_of(data, where)  # a newer layout is refused before its fields are read
        return super().from_dict(data, where)

    def to_dict(self) -> dict:
        return {SCHEMA_FIELD: SCHEMA_VERSION, **super().to_dict()}

    def to_json(self) -> str:
        """The file's text: standard JSON (a NaN figure written as null), indented, ending in a newline."""
        return json.dumps(standard(self.to_dict()), indent=2, allow_nan=False, default=_scalar) + "\n"


# JSON's kinds of value in words, for the messages
_WORDS = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
          dict: "an object"}


def _kind(value: Any) -> str:
    return "null" if value is None else f"{_WORDS.get(type(value), 'a ' + type(value).__name__)} ({value!r:.40})"


def _read(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        (inner,) = [a for a in args if a is not _NONE]
        return _read(value, inner, where)
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise UsageError(f"{where} is {_kind(value)}, not a list{NOT_OURS}")
        return tuple(_read(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (collections.abc.Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise UsageError(f"{where} is {_kind(value)}, not an object{NOT_OURS}")
        return dict(value)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[hint]
    if isinstance(value, bool) != (hint is bool) or not isinstance(value, expected):
        raise UsageError(f"{where} is {_kind(value)}, not {_WORDS[hint]}{NOT_OURS}")
    return float(value) if hint is float else value


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _scalar(value: Any) -> Any:
    """A value the json module does not know: a NumPy scalar as its Python value, anything else null."""
    item = getattr(value, "item", None)
    return standard(item()) if callable(item) else None


def standard(value: Any) -> Any:
    """Standard JSON: a figure with no value (NaN, infinity) becomes null, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: standard(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------------- bench


@dataclass(frozen=True, kw_only=True)
class Cell(Record):
    """What a figure is of: the protocol, the payload as the spec names it, and the payload on the wire."""
    protocol: str
    payload: str
    wire: str


@dataclass(frozen=True, kw_only=True)
class Run(Cell):
    """One measured run: one protocol x payload at one level (users, or an offered rate), one repeat."""
    mode: str
    users: Optional[int] = None
    offered_rps: Optional[float] = None
    level: float  # the users (closed loop) or the offered rate (open loop)
    requests: int
    failures: int
    failure_ratio: float
    window_s: Optional[float] = None
    rps: float
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    p95_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    max_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    valid: bool
    invalid_reasons: tuple[str, ...] = ()
    samples_file: Optional[str] = None
    repeat: Optional[int] = optional_field()  # left out by runs that are not one of several repeats
    machine_probe_ms: Optional[float] = optional_field()  # the machine's speed during the run (not in older files)

    def figure(self, metric: str) -> Optional[float]:
        """rps, or a latency percentile by its short name (p50, p99, ...)."""
        return self.rps if metric == "rps" else getattr(self, f"{metric}_ms")


@dataclass(frozen=True, kw_only=True)
class BenchSummary(Document):
    """summary.json: what a bench (or a capacity search) measured, with its settings and provenance."""
    model: str
    created: Optional[str] = None
    report_dir: Optional[str] = None
    mode: str
    failure_threshold: Optional[float] = None
    failed: bool
    valid: bool
    invalid_runs: int = 0
    server_died: Optional[str] = None  # why the server stopped during the measurement
    runs_planned: Optional[int] = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    correctness: tuple[Mapping[str, Any], ...] = ()
    answers: Mapping[str, Any] = field(default_factory=dict)  # whether the answer checks could fail
    runs: tuple[Run, ...]
    capacity: Optional[tuple[Mapping[str, Any], ...]] = optional_field()  # a capacity search's cells; not a bench's
    thresholds: Optional[tuple[Mapping[str, Any], ...]] = None
    thresholds_passed: Optional[bool] = None
    headline: Optional[str] = None


# ---------------------------------------------------------------------------------------------- capacity


@dataclass(frozen=True, kw_only=True)
class CapacityCell(Cell):
    """One protocol x payload's capacity search: the highest rate within the SLO and every probe it took."""
    capacity_rps: float
    bracket: tuple[Optional[float], ...]
    precision: float
    limited_by: Optional[str] = None
    probes: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, kw_only=True)
class CapacityResult(Document):
    """capacity.json: the SLO and each cell's search."""
    slo: Mapping[str, Any]
    slo_text: str
    results: tuple[CapacityCell, ...]


# -------------------------------------------------------------------------------------------------- tune


@dataclass(frozen=True, kw_only=True)
class TuneTrial(Record):
    """One configuration a tune search tried: its capacity (the cells' geometric mean) and its status."""
    index: int
    config: Mapping[str, Any]
    label: str
    report_dir: Optional[str] = None
    error: Optional[str] = None
    capacity_rps: Optional[float] = None
    valid: Optional[bool] = None
    status: str


@dataclass(frozen=True, kw_only=True)
class TuneResult(Document):
    """tune.json: the search's state and, once it has trials, its recommendation."""
    model: str
    key: str
    complete: bool
    min_gain: Optional[float] = None
    trials: tuple[TuneTrial, ...]
    baseline: Optional[Mapping[str, Any]] = None
    best: Optional[Mapping[str, Any]] = None
    batching: Optional[Mapping[str, Any]] = None
    headline: Optional[str] = None


# ----------------------------------------------------------------------------------------------- compare


@dataclass(frozen=True, kw_only=True)
class CompareRow(Cell):
    """One figure compared: A's and B's value, the change, its 95% interval and the verdict; in `broken`, also
    the --fail-on rule it broke."""
    level: float
    metric: str
    a: Optional[float] = None
    b: Optional[float] = None
    change_pct: Optional[float] = None
    ci95_pct: Optional[tuple[float, ...]] = None
    verdict: str
    method: str
    run_noise_pct: Optional[float] = None
    repeats: tuple[int, ...]
    shared_machine: Mapping[str, Any] = field(default_factory=dict)
    valid: bool
    machine_change_pct: Optional[float] = optional_field()  # B's machine speed probe against A's, during these runs
    rule: Optional[str] = optional_field()


@dataclass(frozen=True, kw_only=True)
class CompareResult(Document):
    """compare.json: every figure of B judged against A, the --fail-on rules it broke, and the headline."""
    model: str
    a: str
    b: str
    mode: str
    min_effect_pct: float
    fail_on: tuple[str, ...] = ()
    rows: tuple[CompareRow, ...]
    broken: tuple[CompareRow, ...] = ()
    passed: bool
    headline: str
    shared_machine: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True, kw_only=True)
class ColdStartVariant(Record):
    """The cold starts of one variant of the export: as it is, or a copy without its warmup records."""
    name: str
    base_path: str
    warmup_file: bool
    starts: tuple[Mapping[str, Any], ...]
    median: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class LifecycleResult(Document):
    """lifecycle.json: what make lifecycle measured around serving (cold start, version swap, density), its
    thresholds and headline."""
    model: str
    created: str
    report_dir: str
    backend: str
    parts: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    warmup_records: Optional[int] = None
    warmup: Mapping[str, Any] = field(default_factory=dict)
    cold_start: tuple[ColdStartVariant, ...] = ()
    swap: Optional[Mapping[str, Any]] = optional_field()     # the version swap under load, when it ran
    density: Optional[Mapping[str, Any]] = optional_field()  # copies of the model in one server, when it ran
    thresholds: tuple[Mapping[str, Any], ...] = ()
    thresholds_passed: Optional[bool] = None
    headline: str
