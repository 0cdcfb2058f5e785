"""Open loop against stand-in servers whose timing is known (benchmarks/standin.py):

* a single-server queue with a fixed service time: `capacity` lands within 10% of what queueing theory (M/D/1)
  predicts for the SLO, and never above the service rate;
* a server that freezes for a second every four: the open-loop p99 shows the stall, a closed-loop p99 hides it;
* a server that answers at once: a constant 200 requests/s schedule is kept (achieved within 2%, under 1% late).
"""
from __future__ import annotations

import dataclasses

import pytest

from benchmarks.standin import StandIn, synthetic_payloads
from loadtests.analyze import validity
from loadtests.drive.payloads import request_bytes
from loadtests.measure.run import Step, Target, run_and_measure
from loadtests.measure.search import Cell, search
from spec.benchmarkschema import SloSpec
from tests.conftest import generator_kept_up, measured_while_the_generator_keeps_up
from tests.queueing import md1_percentile_ms

pytestmark = [pytest.mark.slow, pytest.mark.measures]


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    return synthetic_payloads(tmp_path_factory.mktemp("standin"))


def _target(server: StandIn, payload_file, **changes) -> Target:
    base = Target(model=server.model, rest_url=server.rest_url, grpc_target=server.grpc_target,
                  payload_file=payload_file, warmup_s=1.0, duration_s=8.0, spawn_rate=50, server_pid=server.pid,
                  arrival="poisson", drain_s=5.0)
    return dataclasses.replace(base, **changes)


def _runner(server, payloads, out_dir, rules, protocol="rest", **changes):
    payload_set, payload_file = payloads
    sizes = {(protocol, "image_b64"): request_bytes(payload_set, protocol, "image_b64", server.model)}
    target = _target(server, payload_file, **changes)

    def run(step: Step, **window) -> dict:
        return run_and_measure(step, dataclasses.replace(target, **window), out_dir, sizes, payload_set.sizes, rules)
    return run


def _measured_while_the_generator_keeps_up(measure, kept_up=lambda entry: generator_kept_up(entry["invalid_reasons"])):
    return measured_while_the_generator_keeps_up(measure, kept_up)


def test_capacity_matches_the_queue_theory_predicts(payloads, tmp_path):
    service_ms, slo = 20.0, SloSpec(percentile=90, latency_ms=100)
    rules = validity.Rules(judged_percentile=90, min_duration_s=1.0)
    with StandIn(payloads[1], service_ms=service_ms, servers=1) as server:
        run = _runner(server, payloads, tmp_path, rules)
        probes = []

        def run_open(rate, window_s):
            probes.append(rate)
            return run(Step("rest", "image_b64", rate=rate, tag=f"p{len(probes)}"), duration_s=window_s,
                       fail_over=(slo.percentile, slo.latency_ms))  # as make capacity's probes

        def capacity() -> dict:
            probes.clear()
            return search(Cell("rest", "image_b64", "image_b64"), run_open,
                          lambda: run(Step("rest", "image_b64", users=1, tag="probe"), duration_s=3.0), slo, rules,
                          duration_s=8.0, precision=0.05, failure_threshold=0.01, log=print)
        result = _measured_while_the_generator_keeps_up(capacity, lambda r: r["limited_by"] != "generator")
        stats = server.stats()
    hold_ms = 1000.0 * stats["busy_s"] / stats["count"]  # the real service time (timers overshoot a little)
    outside_ms = result["closed_probe"]["p50_ms"] - hold_ms  # network and client: the same at any load
    # the highest rate meeting the SLO, by bisection (the percentile rises with the rate)
    low, high = 0.3 * 1000.0 / hold_ms, 0.999 * 1000.0 / hold_ms
    assert md1_percentile_ms(low, hold_ms, 90) + outside_ms <= slo.latency_ms
    while high - low > 0.01:
        middle = (low + high) / 2
        low, high = (middle, high) if md1_percentile_ms(middle, hold_ms, 90) + outside_ms <= slo.latency_ms \
            else (low, middle)
    predicted = low
    print(f"service {hold_ms:.2f} ms, outside {outside_ms:.2f} ms: predicted {predicted:.1f} req/s, "
          f"measured {result['capacity_rps']:.1f} req/s after {len(result['probes'])} probes")
    assert result["capacity_rps"] == pytest.approx(predicted, rel=0.10)
    assert result["capacity_rps"] < 1000.0 / hold_ms  # never above what one server can serve
    assert result["limited_by"] is None


def test_open_loop_shows_a_stall_that_closed_loop_hides(payloads, tmp_path):
    rules = validity.Rules(min_duration_s=1.0)
    with StandIn(payloads[1], service_ms=2.0, servers=8, stall_every=4.0, stall_s=1.0) as server:
        run = _runner(server, payloads, tmp_path, rules, duration_s=12.0)
        closed = run(Step("rest", "image_b64", users=1))
        opened = _measured_while_the_generator_keeps_up(lambda: run(Step("rest", "image_b64", rate=50.0)))
    print(f"closed loop: p99 {closed['p99_ms']:.1f} ms (max {closed['max_ms']:.0f} ms, {closed['requests']} requests);"
          f" open loop at 50/s: p99 {opened['p99_ms']:.1f} ms, service p99 {opened['service_p99_ms']:.1f} ms")
    assert closed["max_ms"] > 500  # the closed-loop user did wait through the stalls...
    assert closed["p99_ms"] < 50  # ...but sent almost nothing meanwhile, so its p99 never sees them
    assert opened["p99_ms"] > 500  # a quarter of the scheduled requests were due in a stall
    assert opened["p50_ms"] < 50 and opened["late_ratio"] < 0.01


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_constant_schedule_is_kept(payloads, tmp_path, protocol):
    rules = validity.Rules(min_duration_s=1.0)
    with StandIn(payloads[1], service_ms=0.0) as server:
        run = _runner(server, payloads, tmp_path, rules, protocol=protocol, arrival="constant")
        entry = _measured_while_the_generator_keeps_up(lambda: run(Step(protocol, "image_b64", rate=200.0)))
    print(f"{protocol}: offered 200/s, achieved {entry['rps']:.1f}/s, late {entry['late_ratio']:.2%}, "
          f"p50 {entry['p50_ms']:.2f} ms (service {entry['service_p50_ms']:.2f} ms)")
    assert entry["rps"] == pytest.approx(200.0, rel=0.02)
    assert entry["late_ratio"] < 0.01 and entry["failures"] == 0
    assert entry["littles_law"]["holds"], entry["littles_law"]
