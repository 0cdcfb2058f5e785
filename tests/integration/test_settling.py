"""Runs that settle (loadtests/analyze/settling.py) against stand-ins whose service time changes on a known schedule.

* 40 ms, then 10 ms from the middle of the measured window on: a fixed window blends the two and is judged
  unstable; the adaptive run goes on, reports the settled figure from the sub-windows after the change, and is valid;
* a service time that grows 4 ms every 3 s (a drift): no three sub-windows, and no three parts of two, ever agree,
  so the run is INVALID at max_duration, with a reason that says what to try;
* the same through a Locust master with a worker (the master judges the workers' samples at each boundary).
"""
from __future__ import annotations

import dataclasses

import pytest

from benchmarks.standin import StandIn, synthetic_payloads
from loadtests.analyze import validity
from loadtests.drive.payloads import request_bytes
from loadtests.measure.run import Step, Target, run_and_measure

pytestmark = [pytest.mark.slow, pytest.mark.measures]

RULES = validity.Rules(min_duration_s=1.0)
DURATION_S, WARMUP_S = 6.0, 1.0  # sub-windows of 2 s; the change comes 4 s after the first request: mid-window


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    return synthetic_payloads(tmp_path_factory.mktemp("standin"))


def _run(server: StandIn, payloads, out_dir, step: Step, **changes) -> dict:
    payload_set, payload_file = payloads
    sizes = {(step.protocol, "image_b64"): request_bytes(payload_set, step.protocol, "image_b64", server.model)}
    target = Target(model=server.model, rest_url=server.rest_url, grpc_target=server.grpc_target,
                    payload_file=payload_file, warmup_s=WARMUP_S, duration_s=DURATION_S, spawn_rate=50,
                    server_pid=server.pid, drain_s=5.0, max_duration_s=8 * DURATION_S)
    return run_and_measure(step, dataclasses.replace(target, **changes), out_dir, sizes, payload_set.sizes, RULES)


def _check_settled_after_the_drop(entry: dict) -> None:
    print({k: entry[k] for k in ("p50_ms", "rps", "measured_s", "measured_total_s", "windows_total",
                                 "windows_used", "stable", "invalid_reasons")})
    assert entry["valid"], entry["invalid_reasons"]
    assert entry["stable"] is True
    assert entry["windows_total"] > 3 and entry["measured_total_s"] > DURATION_S  # it went on measuring...
    assert entry["extended_s"] == pytest.approx(entry["measured_total_s"] - DURATION_S)
    assert entry["measured_s"] >= DURATION_S * 0.99  # ...and its figures come from at least a duration after it
    assert 10.0 <= entry["p50_ms"] < 20.0  # the settled service time (10 ms plus the way there), not the blend
    # the span used starts after the change: every sub-window judged is at the settled level
    assert all(part["p50_ms"] < 20.0 for part in entry["sub_windows"])


def test_a_fixed_window_over_the_change_is_unstable(payloads, tmp_path):
    with StandIn(payloads[1], servers=8, delays="40x4,10") as server:
        entry = _run(server, payloads, tmp_path, Step("rest", "image_b64", users=2), max_duration_s=DURATION_S)
    print(entry["invalid_reasons"])
    assert entry["windows_total"] == 3 and entry["stable"] is False and not entry["valid"]
    assert any(r.startswith("unstable:") and "benchmark.max_duration" in r for r in entry["invalid_reasons"])


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_run_goes_on_until_it_settles(payloads, tmp_path, protocol):
    with StandIn(payloads[1], servers=8, delays="40x4,10") as server:
        entry = _run(server, payloads, tmp_path, Step(protocol, "image_b64", users=2))
    _check_settled_after_the_drop(entry)


def test_an_open_loop_run_settles(payloads, tmp_path):
    with StandIn(payloads[1], servers=32, delays="40x4,10") as server:
        entry = _run(server, payloads, tmp_path, Step("rest", "image_b64", rate=100.0))
    _check_settled_after_the_drop(entry)
    assert entry["late_ratio"] < 0.01


def test_a_distributed_run_settles(payloads, tmp_path):
    with StandIn(payloads[1], servers=8, delays="40x4,10") as server:
        entry = _run(server, payloads, tmp_path, Step("rest", "image_b64", users=2), workers=1)
    assert entry["generator_processes"] == 1
    _check_settled_after_the_drop(entry)


def test_a_run_that_never_settles_is_invalid_at_max_duration(payloads, tmp_path):
    # sub-windows of 3 s, and parts of two of them, against a service time that keeps growing: a drift, which
    # measuring longer does not average out at any grouping
    with StandIn(payloads[1], servers=8, delays="10x3,14x3,18x3,22x3,26x3,30x3,34x3,38x3,42") as server:
        entry = _run(server, payloads, tmp_path, Step("rest", "image_b64", users=4), duration_s=9.0,
                     max_duration_s=18.0)
    print(entry["invalid_reasons"])
    assert entry["windows_total"] == 6 and entry["measured_total_s"] == pytest.approx(18.0)
    assert entry["stable"] is False and not entry["valid"]
    unstable = [r for r in entry["invalid_reasons"] if r.startswith("unstable:")]
    assert unstable and all("still after measuring 18 s (benchmark.max_duration: 18 s)" in r and
                            "raise benchmark.max_duration" in r for r in unstable)
