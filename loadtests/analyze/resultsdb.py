"""The results history's database: every bench, capacity, tune and lifecycle result recorded, and read back.

SQLite by default (`<output_dir>/results.sqlite`), or any SQLAlchemy URL, e.g. a team's shared PostgreSQL
(`postgresql+psycopg://user@host/db`; `postgresql://` is read the same way). Two tables: `results` (one row per
command run, with what makes it traceable: git commit, model signature hash, serving version) and `figures` (its
key figures per protocol, payload and level). Each `results` row carries the `schema_version` of the files it
was recorded from; a database made before that column existed gets it when a result is next recorded (its old
rows read as version 0), and `make history` leaves out, in one line, rows a newer tfsb wrote.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

from loadtests.analyze.figures import folded
from spec.errors import SpecError
from spec.results import BenchSummary, LifecycleResult, TuneResult
from spec.resultschema import FIELD as SCHEMA_FIELD, SCHEMA_VERSION

ENV = "TFSB_RESULTS_DB"
FIGURES = ("p50_ms", "p99_ms", "rps", "capacity_rps")


def database_url(spec, given: Optional[str] = None) -> Optional[str]:
    """The database to use: `given`, else $TFSB_RESULTS_DB, else benchmark.results_db; None when it is 'off'."""
    where = given or os.environ.get(ENV) or spec.benchmark.results_db
    if where.strip().lower() == "off":
        return None
    if "://" in where:
        return "postgresql+psycopg://" + where.split("://", 1)[1] if where.startswith("postgresql://") else where
    return f"sqlite:///{spec.resolve(spec.benchmark.output_dir) / where}"


def display(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (an unparsable URL is shown as given; connecting reports it)
        return url


def _tables():
    from sqlalchemy import Boolean, Column, Float, ForeignKey, Integer, MetaData, String, Table, Text

    metadata = MetaData()
    results = Table(
        "results", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("recorded_at", String(32), nullable=False), Column("kind", String(16), nullable=False),
        Column("model", String(200), nullable=False, index=True), Column("report_dir", Text),
        Column("spec", Text), Column("spec_sha256", String(64)), Column("git_commit", String(80)),
        Column("model_signature_sha256", String(64)), Column("serving_version", String(80)),
        Column("server", Text), Column("backend", String(16)), Column("image", Text), Column("host", String(200)),
        Column("mode", String(8)), Column("valid", Boolean), Column("failed", Boolean),
        Column("thresholds_passed", Boolean), Column("note", Text), Column(SCHEMA_FIELD, Integer))
    figures = Table(
        "figures", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("result_id", Integer, ForeignKey("results.id"), nullable=False, index=True),
        Column("protocol", String(8)), Column("payload", String(32)), Column("wire", String(32)),
        Column("level", Float), Column("repeats", Integer), Column("valid", Boolean),
        *(Column(name, Float) for name in FIGURES))
    return metadata, results, figures


def _engine(url: str):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        return create_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise SpecError(f"results database {display(url)!r} ({ENV} or benchmark.results_db): not a database URL "
                        f"this harness can open ({exc}); use a file name, sqlite:///PATH or "
                        "postgresql://user@host/db") from None


def _call(url: str, action: Callable, note: str = ""):
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return action()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SpecError(f"results database {display(url)}: {reason}; check {ENV} or benchmark.results_db"
                        + note) from None


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def rows_of(kind: str, summary: BenchSummary) -> tuple[dict, list[dict]]:
    """The `results` row and the `figures` rows of one result (a bench or capacity summary, or a tune result)."""

    result = _result_row(kind, summary.model, summary.report_dir, summary.provenance, mode=summary.mode,
                         valid=summary.valid, failed=summary.failed, thresholds_passed=summary.thresholds_passed,
                         note=summary.headline)
    figures = []
    if kind == "bench":
        for r in folded([run.to_dict() for run in summary.runs]):
            figures.append({"protocol": r["protocol"], "payload": r["payload"], "wire": r["wire"],
                            "level": float(r["level"]), "repeats": r["repeats"], "valid": r["valid"],
                            **{k: _number(r.get(k)) for k in ("p50_ms", "p99_ms", "rps")}, "capacity_rps": None})
    else:  # capacity, or tune (its best configuration's cells)
        for c in summary.capacity or ():
            figures.append({"protocol": c["protocol"], "payload": c["payload"], "wire": c["wire"], "level": None,
                            "repeats": 1, "valid": c["limited_by"] not in ("generator", "probes"),
                            "p50_ms": None, "p99_ms": None, "rps": None,
                            "capacity_rps": _number(c["capacity_rps"])})
    return result, figures


def record(url: str, kind: str, summary: BenchSummary, run_dir: Path) -> int:
    """Insert one result and its figures; returns its id. SpecError (one line) when the database refuses."""
    result, rows = rows_of(kind, summary)
    return _insert(url, result, rows, run_dir)


def _result_row(kind: str, model: str, report_dir: Optional[str], provenance, **fields) -> dict:
    """A `results` row: what was recorded, when, and what makes it traceable (from the result's provenance)."""
    row = {SCHEMA_FIELD: SCHEMA_VERSION,
           "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "kind": kind,
           "model": model, "report_dir": report_dir or "", **fields,
           **{k: provenance.get(k) for k in ("spec", "spec_sha256", "git_commit", "model_signature_sha256",
                                             "serving_version", "server", "backend", "image", "host")}}
    row["serving_version"] = None if row["serving_version"] is None else str(row["serving_version"])
    return row


def lifecycle_row(result: LifecycleResult) -> dict:
    """The `results` row of a make lifecycle result: its headline is the note (it has no per-cell figures)."""
    return _result_row("lifecycle", result.model, result.report_dir, result.provenance, mode=None, valid=True,
                       failed=False, thresholds_passed=result.thresholds_passed, note=result.headline)


def record_lifecycle(url: str, result: LifecycleResult, run_dir: Path) -> int:
    """Insert a make lifecycle result; returns its id."""
    return _insert(url, lifecycle_row(result), [], run_dir)


def _insert(url: str, result: dict, rows: list[dict], run_dir: Path) -> int:
    from sqlalchemy import insert

    metadata, results, figures = _tables()
    result["report_dir"] = str(run_dir)
    engine = _engine(url)

    def write() -> int:
        with engine.begin() as connection:
            metadata.create_all(connection)
            _add_missing_columns(connection, results)
            result_id = connection.execute(insert(results).values(**result)).inserted_primary_key[0]
            if rows:
                connection.execute(insert(figures), [{**row, "result_id": result_id} for row in rows])
            return int(result_id)
    try:
        return _call(url, write, " (the report itself is written)")
    finally:
        engine.dispose()


def _add_missing_columns(connection, table) -> None:
    """A table created by an older tfsb gets the columns added since (nullable: its rows keep NULL there)."""
    from sqlalchemy import inspect, text

    present = {column["name"] for column in inspect(connection).get_columns(table.name)}
    for column in table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def tune_summary(result: TuneResult, tune_dir: Path) -> BenchSummary:
    """A tune result as history records it: the best configuration's cells, provenance from its trial."""
    best = result.best
    trial = next((t for t in result.trials if best and t.index == best.get("trial")), None)
    provenance = {}
    if trial is not None:
        summary_file = Path(trial.report_dir or "") / "summary.json"
        if summary_file.exists():
            provenance = json.loads(summary_file.read_text()).get("provenance") or {}
    return BenchSummary.made({"model": result.model, "report_dir": str(tune_dir), "mode": "open",
                              "valid": bool(best and best.get("valid")), "failed": False, "thresholds_passed": None,
                              "headline": result.headline, "provenance": provenance, "runs": [],
                              "capacity": trial.get("cells", []) if trial else []})


def load(url: str, model: str, limit: int = 50) -> list[dict]:
    """The model's last `limit` results, oldest first, each with its figures."""
    from sqlalchemy import inspect, select

    metadata, results, figures = _tables()
    engine = _engine(url)

    def read() -> list[dict]:
        with engine.connect() as connection:
            if not inspect(connection).has_table("results"):
                return []
            present = {column["name"] for column in inspect(connection).get_columns("results")}
            columns = [column for column in results.columns if column.name in present]  # an older database
            chosen = connection.execute(select(*columns).where(results.c.model == model)
                                        .order_by(results.c.id.desc()).limit(limit)).mappings().all()
            out = [{SCHEMA_FIELD: None, **row} for row in reversed(chosen)]
            by_id = {row["id"]: row for row in out}
            for row in out:
                row["figures"] = []
            if by_id:
                for fig in connection.execute(select(figures).where(figures.c.result_id.in_(list(by_id)))
                                              .order_by(figures.c.id)).mappings():
                    by_id[fig["result_id"]]["figures"].append(dict(fig))
            return out
    try:
        return _call(url, read)
    finally:
        engine.dispose()


def key_figures(result: dict) -> list[dict]:
    """Per protocol and payload: p50 and p99 at the lowest level, the highest throughput, the capacity."""
    cells: dict[tuple, list[dict]] = {}
    for fig in result["figures"]:
        cells.setdefault((fig["protocol"], fig["wire"]), []).append(fig)
    out = []
    for (protocol, wire), figs in cells.items():
        lowest = min((f for f in figs if f["level"] is not None), key=lambda f: f["level"], default=None)
        rps = [f["rps"] for f in figs if f["rps"] is not None]
        capacity = [f["capacity_rps"] for f in figs if f["capacity_rps"] is not None]
        out.append({"cell": f"{protocol} {wire}", "level": lowest and lowest["level"],
                    "p50_ms": lowest and lowest["p50_ms"], "p99_ms": lowest and lowest["p99_ms"],
                    "max_rps": max(rps) if rps else None, "capacity_rps": max(capacity) if capacity else None,
                    "valid": all(f["valid"] is not False for f in figs)})
    return out
