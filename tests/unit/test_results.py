"""The typed results (spec/results.py): what a file holds reads into frozen dataclasses and writes back unchanged;
a missing or mistyped field, or a newer layout, is one line naming the file and the field."""
from __future__ import annotations

import dataclasses
import json

import pytest

from spec.errors import UsageError
from spec.results import BenchSummary, CapacityResult, CompareResult, Run, TuneResult
from spec.resultschema import SCHEMA_VERSION

RUN = {"protocol": "grpc", "payload": "image_b64", "wire": "image_bytes", "mode": "open", "users": None,
       "offered_rps": 40.0, "level": 40.0, "arrival": "poisson", "requests": 400, "failures": 2,
       "failure_ratio": 0.005, "window_s": 10.0, "rps": 39.8, "p50_ms": 4.5, "p90_ms": 6.0, "p95_ms": 7.0,
       "p99_ms": None, "max_ms": 30.0, "mean_ms": 5.0, "valid": False, "invalid_reasons": ["unstable: p50 moved"],
       "samples_file": "grpc-image_bytes-r40.npz", "breakdown": {"server_ms": 3.0}, "by_image": [{"image": 0}]}
SUMMARY = {"model": "m", "created": "2026-12-05T00:00:00+00:00", "report_dir": "/r", "mode": "open",
           "failure_threshold": 0.01, "failed": False, "valid": False, "settings": {"repeats": 1},
           "provenance": {"git_commit": "abc"}, "runs": [RUN], "thresholds": None, "thresholds_passed": None,
           "headline": "h", "floor": {"model": "m_floor"}}


def test_a_summary_reads_typed_and_writes_back_what_it_read():
    summary = BenchSummary.from_dict(SUMMARY, "summary.json")
    (run,) = summary.runs
    assert isinstance(run, Run) and run.offered_rps == 40.0 and run.level == 40.0 and run.p99_ms is None
    assert run.invalid_reasons == ("unstable: p50 moved",) and run.figure("p50") == 4.5 and run.figure("rps") == 39.8
    assert run.get("breakdown") == {"server_ms": 3.0} and run.get("repeat", 1) == 1 and summary.get("floor")
    assert summary.capacity is None and summary.settings == {"repeats": 1}
    # written again: the same fields and values (fields the file did not have stay out), this harness's version
    assert summary.to_dict() == {"schema_version": SCHEMA_VERSION, **SUMMARY}
    assert list(summary.to_dict()) == ["schema_version", *SUMMARY]  # in the order read
    assert list(summary.runs[0].to_dict()) == list(RUN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.rps = 1.0


def test_every_result_kind_round_trips():
    capacity = {"schema_version": 1, "slo": {"percentile": 99.0, "latency_ms": 50.0}, "slo_text": "p99 <= 50 ms",
                "results": [{"protocol": "rest", "payload": "image_b64", "wire": "image_b64", "slo": {},
                             "capacity_rps": 120.0, "bracket": [120.0, 130.0], "precision": 0.1,
                             "limited_by": None, "closed_probe": None, "probes": [{"offered_rps": 60.0}]}]}
    assert CapacityResult.from_dict(capacity, "capacity.json").to_dict() == capacity
    assert CapacityResult.from_dict(capacity, "c").results[0].bracket == (120.0, 130.0)
    tune = {"schema_version": 1, "model": "m", "key": "k", "complete": False, "min_gain": 0.1,
            "trials": [{"index": 1, "config": {"batching": False}, "label": "the baseline", "report_dir": "/t/1",
                        "error": None, "capacity_rps": None, "valid": None, "status": "failed", "cells": []}],
            "baseline": None, "best": None}
    read = TuneResult.from_dict(tune, "tune.json")
    assert read.to_dict() == tune and read.trials[0].status == "failed" and read.best is None
    row = {"protocol": "grpc", "payload": "image_b64", "wire": "image_bytes", "level": 1.0, "metric": "p99",
           "a": 10.0, "b": 12.0, "change_pct": 20.0, "ci95_pct": [15.0, 25.0], "verdict": "slower",
           "method": "repeats", "run_noise_pct": 2.0, "repeats": [3, 3], "shared_machine": {"a": [], "b": []},
           "valid": True}
    compare = {"schema_version": 1, "model": "m", "a": "/a", "b": "/b", "mode": "closed", "min_effect_pct": 5.0,
               "fail_on": ["p99:+10%"], "rows": [row], "broken": [{**row, "rule": "p99:+10%"}], "passed": False,
               "headline": "1 of 1 figures slower", "shared_machine": []}
    read = CompareResult.from_dict(compare, "compare.json")
    assert read.to_dict() == compare and read.broken[0].rule == "p99:+10%" and read.rows[0].rule is None
    assert "rule" not in read.rows[0].to_dict()
    # a file is standard JSON: a NaN figure, typed or not, is written as null
    made = dataclasses.replace(read, rows=(dataclasses.replace(read.rows[0], change_pct=float("nan")),),
                               more={"extra": [float("inf")]})
    written = json.loads(made.to_json())
    assert written["rows"][0]["change_pct"] is None and written["extra"] == [None]


@pytest.mark.parametrize("change, says", [
    ({"runs": None}, "summary.json: runs is null, not a list"),
    ({"runs": [{**RUN, "requests": "400"}]},
     "summary.json: runs[0]: requests is a string ('400'), not a whole number"),
    ({"runs": [{**RUN, "valid": 1}]}, "summary.json: runs[0]: valid is a whole number (1), not a boolean"),
    ({"runs": [{**RUN, "requests": True}]}, "runs[0]: requests is a boolean (True), not a whole number"),
    ({"model": None}, "summary.json: model is null, not a string"),
    ({"schema_version": SCHEMA_VERSION + 1}, "summary.json: written by a newer tfsb"),
])
def test_a_file_that_is_not_what_tfsb_writes_is_one_line_naming_the_field(change, says):
    with pytest.raises(UsageError) as caught:
        BenchSummary.from_dict({**SUMMARY, **change}, "summary.json")
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_field_is_named():
    run = {k: v for k, v in RUN.items() if k != "rps"}
    with pytest.raises(UsageError, match=r"^summary.json: runs\[0\]: no 'rps': the file was not written by tfsb"):
        BenchSummary.from_dict({**SUMMARY, "runs": [run]}, "summary.json")
    with pytest.raises(UsageError, match="tune.json: a list .*not an object"):
        TuneResult.from_dict([], "tune.json")
    # a field with a default may be missing: an older file read as far as it goes
    older = {k: v for k, v in SUMMARY.items() if k not in ("settings", "provenance", "created")}
    assert BenchSummary.from_dict(older, "summary.json").provenance == {}
    assert "provenance" not in BenchSummary.from_dict(older, "summary.json").to_dict()
