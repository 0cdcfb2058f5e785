"""Open-loop schedules, the validity rules, open-loop measurement and the capacity search (no server needed)."""
from __future__ import annotations

import math

import gevent
import numpy as np
import pytest

from loadtests.analyze import validity
from loadtests.drive.openloop import OpenLoop, drive_open_loop
from loadtests.drive.schedule import Schedule
from loadtests.measure.run import Step, Target, locust_command, measure
from loadtests.measure.search import Cell, probe_window, scheduled_for, search
from loadtests.report.capacitypage import terminal_table
from spec.benchmarkschema import BenchmarkSpec, SloSpec
from spec.errors import UsageError
from spec.units import parse_slo
from tests.queueing import md1_percentile_ms
from tests.unit.test_loadtests import _samples


def test_poisson_schedule_has_the_rate_exponential_gaps_and_a_seed():
    times = Schedule(200.0, "poisson", seed=7).first(20000)
    gaps = np.diff(times)
    assert (gaps > 0).all()
    assert 20000 / times[-1] == pytest.approx(200.0, rel=0.03)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05)  # exponential: coefficient of variation 1
    assert np.array_equal(times, Schedule(200.0, "poisson", seed=7).first(20000))
    assert not np.array_equal(times[:100], Schedule(200.0, "poisson", seed=8).first(100))


def test_shares_of_a_schedule_add_up_to_the_full_rate():
    constant = np.sort(np.concatenate([Schedule(100.0, "constant", share=k, shares=4).first(250) for k in range(4)]))
    assert np.allclose(np.diff(constant), 0.01)  # four shares interleave into one even 100/s tick
    poisson = [Schedule(100.0, "poisson", seed=1, share=k, shares=4).first(2500) for k in range(4)]
    assert not np.array_equal(poisson[0], poisson[1])  # independent streams, not four copies
    merged = np.sort(np.concatenate(poisson))
    horizon = min(p[-1] for p in poisson)
    assert (merged < horizon).sum() / horizon == pytest.approx(100.0, rel=0.05)


def test_a_schedule_refuses_nonsense():
    for bad in (dict(rate=0), dict(rate=float("inf")), dict(rate=5, arrival="bursty"), dict(rate=5, share=2, shares=2)):
        with pytest.raises(ValueError):
            Schedule(**bad)


def test_slo_and_the_new_benchmark_keys_validate():
    assert parse_slo("p99:100ms") == {"percentile": 99.0, "latency_ms": 100.0}
    assert parse_slo("p99.9:0.5s") == {"percentile": 99.9, "latency_ms": 500.0}
    assert parse_slo({"percentile": 95, "latency": "20ms"}) == {"percentile": 95.0, "latency_ms": 20.0}
    for bad in ("99:100ms", "p100:1s", "p0:1s", "p99:fast", "p99:0ms", {"percentile": 99}, {"percentile": 9,
                                                                                                "latency": 5}):
        with pytest.raises(ValueError):
            parse_slo(bad)
    spec = BenchmarkSpec.model_validate({"mode": "open", "rates": [5, 12.5], "slo": "p90:250ms", "precision": "2%",
                                         "late_tolerance": "2ms"})
    assert spec.slo == SloSpec(percentile=90, latency_ms=250) and spec.judged == "p90_ms"
    assert spec.precision == pytest.approx(0.02) and spec.late_tolerance == pytest.approx(0.002)
    assert BenchmarkSpec().mode == "closed" and BenchmarkSpec().judged == "p50_ms"


def test_open_loop_overrides_are_validated_like_the_spec():
    from loadtests.measure.session import Overrides, apply_overrides
    from spec.loader import load_spec
    from tests.conftest import REPO

    spec = load_spec(REPO / "specs" / "digits_cnn.yaml")
    changed = apply_overrides(spec, Overrides(mode="open", rates="10,20,40", arrival="constant", slo="p99:100ms"))
    bench = changed.benchmark
    assert (bench.mode, bench.rates, bench.arrival, bench.slo.latency_ms) == ("open", (10, 20, 40), "constant", 100)
    for overrides, field in ((Overrides(mode="half-open"), "mode"), (Overrides(rates="10,-5"), "rates"),
                             (Overrides(arrival="bursty"), "arrival"), (Overrides(slo="99:100"), "slo"),
                             (Overrides(max_in_flight="0"), "max_in_flight"), (Overrides(precision="-5%"), "precision")):
        with pytest.raises(UsageError, match=f"command-line override: {field}="):
            apply_overrides(spec, overrides)


def test_an_open_loop_step_is_one_driver_per_process_with_its_schedule(tmp_path):
    target = Target("m", "http://127.0.0.1:1", "127.0.0.1:2", tmp_path / "p.npz", 5, 20, 10, arrival="constant",
                    seed=3, max_in_flight=64, late_tolerance_ms=2.0, drain_s=4.0, workers=3)
    step = Step("rest", "image_b64", rate=40.0)
    command = locust_command(step, target, tmp_path, master_port=5601)
    assert command[command.index("--users") + 1] == "3"  # one schedule driver per worker
    assert command[command.index("--rate") + 1] == "40" and command[command.index("--arrival") + 1] == "constant"
    assert command[command.index("--max-in-flight") + 1] == "64" and command[command.index("--seed") + 1] == "3"
    assert command[command.index("--drain") + 1] == "4" and step.slug == "rest-image_b64-r40"
    with pytest.raises(ValueError):
        Step("rest", "image_b64", users=2, rate=5.0)


def test_open_loop_latency_counts_from_the_schedule_and_the_window_holds_the_requests_due_in_it(tmp_path):
    n, window = 2000, 10.0
    due = np.linspace(-1.0, 11.0, n, endpoint=False)  # a second before and after the window
    service = np.full(n, 5.0)
    latency = service + np.where((due > 4) & (due < 5), 400.0, 0.0)  # requests due in a stall wait for it
    late = np.zeros(n, bool)
    late[:10] = True  # only before the window: they do not count
    _samples(tmp_path / "s.npz", latency, np.ones(n, bool), np.zeros(n, int), cpu=30.0, window=window, due=due,
             service=service, late=late, mode="open", offered_rps=n / 12.0, late_tolerance_ms=5.0,
             in_flight_mean=float((latency / 1000.0)[(due >= 0) & (due < window)].sum() / window))
    entry = measure(Step("grpc", "image_b64", rate=n / 12.0), tmp_path / "s.npz", [1], [(1, 1)])
    inside = (due >= 0) & (due < window)
    assert entry["requests"] == inside.sum() and entry["late_ratio"] == 0.0 and entry["mode"] == "open"
    assert entry["p99_ms"] == pytest.approx(np.percentile(latency[inside], 99)) and entry["p99_ms"] > 400
    assert entry["service_p99_ms"] == pytest.approx(5.0)  # the server's own time hides the stall
    assert entry["rps"] == pytest.approx(((due + latency / 1000 >= 0) & (due + latency / 1000 <= window)).sum() / 10)
    assert entry["littles_law"]["holds"]
    assert entry["valid"], entry["invalid_reasons"]  # judged on p50 (no SLO): the stall leaves it steady
    judged_p99 = measure(Step("grpc", "image_b64", rate=n / 12.0), tmp_path / "s.npz", [1], [(1, 1)],
                         validity.Rules(judged_percentile=99))
    assert ["unstable: p99 moved" in r for r in judged_p99["invalid_reasons"]] == [True]  # the stall's sub-window
    assert entry["offered_rps"] == pytest.approx(n / 12.0) and entry["level"] == entry["offered_rps"]


def _hundred_per_second(latency_ms: float):
    t = np.arange(1, 1001) / 100.0  # completions at 100/s through a 10 s window
    return t, np.full(1000, latency_ms), 10.0


def test_validity_rules_name_what_is_wrong():
    rules = validity.Rules(min_duration_s=5, min_requests=100, stability_percent=10, min_tail_samples=10,
                           max_late_ratio=0.01, judged_percentile=99)
    def sub(rps=(100.0,) * 3, p99=(20.0,) * 3, band=(19.0, 21.0)):
        return [{"from_s": 10.0 * i, "to_s": 10.0 * (i + 1), "rps": r, "p99_ms": v, "band": list(band)}
                for i, (r, v) in enumerate(zip(rps, p99))]
    steady = sub()
    base = {"window_s": 10.0, "requests": 1000, "failures": 0, "late_ratio": 0.0, "late_tolerance_ms": 5.0,
            "generator_bound": False, "generator_cpu_percent": 20.0, "littles_law": None}
    assert validity.judge(base, steady, rules) == []
    assert validity.needed_samples(99, 10) == 1000 and validity.needed_samples(50, 10) == 20
    cases = [({"window_s": 3.0}, steady, "min_duration"), ({"requests": 50}, steady, "min_requests"),
             ({"requests": 500}, steady, "p99 rests on 500 answers; it needs 1000"),
             ({}, sub(p99=(20.0, 30.0, 20.0)), "p99 moved 43%"),
             ({}, sub(rps=(80.0, 100.0, 100.0)), "throughput moved"),
             ({"late_ratio": 0.05}, steady, "5.0% of requests started late"),
             ({"generator_bound": True, "generator_cpu_percent": 97.0}, steady, "generator-bound"),
             ({"littles_law": validity.littles_law(3.0, *_hundred_per_second(20.0))}, steady,
              "Little's law does not hold")]
    for change, windows, expected in cases:
        reasons = validity.judge({**base, **change}, windows, rules)
        assert expected in reasons[0] and len(reasons) == (2 if change.get("requests") == 50 else 1), (change, reasons)
    assert validity.judge(base, steady, rules, server_stopped="exited with code 1") == [
        "the server stopped: exited with code 1"]
    assert validity.littles_law(2.0, *_hundred_per_second(20.0))["holds"]  # 100/s x 20 ms = 2 in flight
    t, latency, window = _hundred_per_second(20.0)
    latency[0] = 5000.0  # one request straddling the window's start: only its part inside counts
    assert validity.littles_law(2.0, t, latency, window)["ratio"] == pytest.approx(2.0 / (2.0 - 0.01 / 10), 1e-6)
    # movement that sampling noise explains is not instability: inside the bands, or counts too small to tell
    assert validity.judge(base, sub(p99=(20.0, 30.0, 20.0), band=(15.0, 35.0)), rules) == []
    assert validity.judge(base, [{**p, "to_s": p["from_s"] + 0.5} for p in sub(rps=(80.0, 100.0, 100.0))],
                          rules) == []  # 40 to 50 requests per part: +-30% is noise
    pace = [{**p, "pace": v} for p, v in zip(steady, (1.0, 0.7, 1.0))]  # open loop: completions over arrivals
    assert "throughput against the offered load moved" in validity.judge(base, pace, rules)[0]


def _md1_p90_ms(rate: float, service_ms: float) -> float:
    return md1_percentile_ms(rate, service_ms, 90, arrivals=20000)


def _fake_run(service_ms: float, calls: list, limit_rps: float = math.inf):
    def run_open(rate: float, window_s: float) -> dict:
        calls.append((rate, window_s))
        p90 = _md1_p90_ms(rate, service_ms) if rate < 1000.0 / service_ms else 1e6
        late = 0.2 if rate > limit_rps else 0.0
        reasons = [f"{late:.1%} of requests started late"] if late else []
        return {"offered_rps": rate, "rps": min(rate, 1000.0 / service_ms), "p90_ms": p90, "service_p50_ms": 20.0,
                "late_ratio": late, "failure_ratio": 0.0, "window_s": window_s, "requests": int(rate * window_s),
                "valid": not reasons, "invalid_reasons": reasons}

    def run_closed() -> dict:
        return {"users": 1, "rps": 1000.0 / service_ms, "p90_ms": service_ms, "p50_ms": service_ms, "valid": True}
    return run_open, run_closed


def test_capacity_brackets_then_bisects_to_the_queue_the_theory_predicts():
    slo = SloSpec(percentile=90, latency_ms=100)
    rules = validity.Rules(judged_percentile=90)
    calls: list = []
    run_open, run_closed = _fake_run(20.0, calls)
    result = search(Cell("rest", "image_b64", "image_b64"), run_open, run_closed, slo, rules, 10.0, 0.05, 0.01,
                    log=lambda line: None)
    rates = np.linspace(20, 49.9, 300)
    predicted = max(r for r in rates if _md1_p90_ms(r, 20.0) <= 100)
    assert result["capacity_rps"] == pytest.approx(predicted, rel=0.06) and result["capacity_rps"] < 50.0
    low, high = result["bracket"]
    assert low == result["capacity_rps"] and (high - low) / low <= 0.05 and result["limited_by"] is None
    assert [p["offered_rps"] for p in result["probes"]][:2] == [25.0, 50.0]  # half the 1-user rate, then doubled
    assert all(w >= 10.0 for _, w in calls)
    assert "50" not in terminal_table([result], slo).split("\n")[2].split("|")[2]  # gRPC column empty


def test_capacity_stops_at_the_generator_and_says_so():
    calls: list = []
    run_open, run_closed = _fake_run(2.0, calls, limit_rps=300.0)  # the server takes 500/s, the generator 300/s
    result = search(Cell("grpc", "image_b64", "image_bytes"), run_open, run_closed, SloSpec(percentile=90,
                    latency_ms=100), validity.Rules(judged_percentile=90), 10.0, 0.05, 0.01, log=lambda line: None)
    assert result["limited_by"] == "generator" and result["capacity_rps"] == 250.0
    assert "lower bound" in terminal_table([result], SloSpec(percentile=90, latency_ms=100))
    calls.clear()
    run_open, run_closed = _fake_run(2.0, calls, limit_rps=200.0)  # the first probe (250/s) is already too fast
    result = search(Cell("grpc", "image_b64", "image_bytes"), run_open, run_closed, SloSpec(percentile=90,
                    latency_ms=100), validity.Rules(judged_percentile=90), 10.0, 0.05, 0.01, log=lambda line: None)
    assert [rate for rate, _ in calls] == [250.0, 125.0] and result["capacity_rps"] == 125.0  # down, not 0
    assert result["limited_by"] == "generator"


def test_an_unreachable_slo_gives_zero_not_a_guess():
    calls: list = []
    run_open, run_closed = _fake_run(20.0, calls)
    result = search(Cell("rest", "image_b64", "image_b64"), run_open, run_closed, SloSpec(percentile=90,
                    latency_ms=10), validity.Rules(judged_percentile=90), 10.0, 0.05, 0.01, log=lambda line: None)
    assert result["capacity_rps"] == 0.0 and result["limited_by"] == "slo"
    assert all(not p["meets_slo"] for p in result["probes"])


def test_probe_windows_grow_until_the_percentile_is_supported():
    rules = validity.Rules(min_tail_samples=10)
    assert probe_window(1000.0, 99, rules, 10.0) == 10.0
    assert probe_window(50.0, 99, rules, 10.0) == pytest.approx(1000 * 1.15 / 50)
    assert probe_window(1.0, 99, rules, 10.0) == 100.0  # capped at 10 x the duration


def test_probe_windows_hold_min_requests_even_when_poisson_arrivals_fall_short():
    # a Poisson schedule whose mean is `scheduled_for(n)` holds n requests 3 deviations below its mean
    for count in (20, 100, 459, 1000):
        mean = scheduled_for(count)
        assert mean >= 1.15 * count and mean - 3 * mean ** 0.5 >= count - 1e-9
    assert scheduled_for(100) == pytest.approx(134.8, abs=0.1)  # 1.15 x would be 115: a CI probe held 99
    assert scheduled_for(1000) == pytest.approx(1150)           # large counts: the 15% margin is the wider one
    # and benchmark.min_requests counts, not only the percentile's tail: p50 needs 20 answers, the rules 100
    p50 = validity.Rules(min_tail_samples=10, min_requests=100)
    assert probe_window(10.0, 50, p50, 3.0) == pytest.approx(scheduled_for(100) / 10.0)
    assert probe_window(20.0, 50, validity.Rules(min_tail_samples=10, min_requests=300), 3.0) == \
        pytest.approx(scheduled_for(300) / 20.0)
    assert probe_window(1000.0, 50, validity.Rules(min_requests=300), 3.0) == 3.0
    # what the schedule actually holds: seeded Poisson gaps at 33.66 req/s over the window probe_window gives
    rng = np.random.default_rng(0)
    window = probe_window(33.66, 90, p50, 3.0)
    short = sum(np.cumsum(rng.exponential(1 / 33.66, 400)).searchsorted(window) < 100 for _ in range(2000))
    assert short <= 2000 * 0.01, short  # about 1 in 700 expected; 1% allows for sampling


def test_capacity_json_stays_standard_json_when_a_probe_had_no_answers(tmp_path):
    """A probe whose window held no answers has NaN percentiles: written as null, not a crash."""
    import json

    from loadtests.report.capacitypage import write
    from spec.benchmarkschema import SloSpec

    results = [{"protocol": "rest", "payload": "image_b64", "wire": "image_b64", "capacity_rps": 855.0,
                "bracket": [855.0, 1282.4], "precision": 0.1, "limited_by": None, "probes": [{"offered_rps": 1709.9, "achieved_rps": 0.0, "p90_ms": float("nan"),
                            "service_p50_ms": float("nan"), "valid": False}]}]
    path = write(results, tmp_path, SloSpec(percentile=90, latency_ms=40))
    probe = json.loads(path.read_text())["results"][0]["probes"][0]
    assert probe["p90_ms"] is None and probe["service_p50_ms"] is None and probe["achieved_rps"] == 0.0


def test_capacity_on_the_confidence_bound_counts_only_rates_whose_bound_meets_the_slo():
    """SLO_CONFIDENCE: a rate whose measured p90 meets the SLO but whose 99% upper bound does not is a fail."""
    slo = SloSpec(percentile=90, latency_ms=100)

    def entry(p90: float, bound) -> dict:
        return {"offered_rps": 40.0, "rps": 40.0, "p90_ms": p90, "p90_ms_upper": bound, "service_p50_ms": 20.0,
                "late_ratio": 0.0, "failure_ratio": 0.0, "window_s": 10.0, "requests": 400, "valid": True,
                "invalid_reasons": []}
    from loadtests.measure.search import verdict
    assert verdict(entry(95.0, 104.0), slo, 0.01)["meets_slo"]  # the point estimate: a pass
    on_bound = verdict(entry(95.0, 104.0), slo, 0.01, on_bound=True)
    assert not on_bound["meets_slo"] and on_bound["judged_on"] == "p90_ms_upper" and on_bound["p90_ms"] == 95.0
    assert verdict(entry(90.0, 99.0), slo, 0.01, on_bound=True)["meets_slo"]
    assert not verdict(entry(90.0, None), slo, 0.01, on_bound=True)["meets_slo"]  # too few samples for a bound
    # and its probes are long enough for a bound as well as for the tail
    bound_rules = validity.Rules(min_tail_samples=1, judge_on_bound=True, confidence=0.99)
    assert probe_window(10.0, 99, bound_rules, 10.0) == pytest.approx(scheduled_for(459) / 10.0)
    assert probe_window(10.0, 99, validity.Rules(min_tail_samples=1), 10.0) == pytest.approx(scheduled_for(100) / 10.0)


class _Context:
    """What drive_open_loop needs of a run's LoadContext."""

    def __init__(self, loop):
        self.open_loop = loop
        self.outstanding = 0

    def in_flight(self, delta: int, since=None) -> None:
        self.outstanding += delta

    def next_image(self) -> int:
        return 0


@pytest.mark.parametrize("rate, cap", [(200.0, 1000), (0.01, 1000), (200.0, 2)],
                         ids=["sending", "a slow schedule", "waiting under the cap"])
def test_the_open_loop_driver_returns_when_the_run_stops(rate, cap):
    """Locust waits --stop-timeout (10 s) for a task that does not end: the driver (and an idle second user) must
    end on OpenLoop.stop, which test_stopping calls before Locust stops the users. Before, every open-loop step
    and capacity probe lasted 10 s longer than it measured."""
    loop = OpenLoop(Schedule(rate, "constant"), max_in_flight=cap, late_tolerance_s=0.005)
    ctx, started = _Context(loop), []
    loop.start()
    users = [gevent.spawn(drive_open_loop, ctx, lambda image, due, number: started.append(number))
             for _ in range(2)]  # the second idles: one driver per process
    gevent.sleep(0.2)  # long enough to send; not long enough for the slow schedule's second request
    assert started and (len(started) == cap if cap < 1000 else True), started  # the cap holds the driver
    loop.stop()
    gevent.joinall(users, timeout=5)  # a hang detector, not a timing: without the stop they never end
    assert all(user.dead for user in users)
    sent = len(started)
    gevent.sleep(0.05)
    assert len(started) == sent  # nothing is sent after the stop
