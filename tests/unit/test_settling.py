"""Runs that settle (validity.settle), the percentile's confidence bound (validity.upper_bound) and the exact
float JSON of REST payloads (loadtests/drive/jsonfloat.py), on synthetic data whose answers are known."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from loadtests.analyze import validity
from loadtests.analyze.settling import Gathered, Window, facts, measure_until_settled
from loadtests.drive import jsonfloat
from loadtests.measure.run import bound_fields, settling_fields

RULES = validity.Rules(stability_percent=10.0, judged_percentile=50.0)


def _closed_loop(latency_ms_at, seconds: float, users: int = 2, seed: int = 0):
    """Samples of `users` closed-loop users for `seconds`, each request taking latency_ms_at(t) plus noise."""
    rng = np.random.default_rng(seed)
    t_done, latency = [], []
    for _ in range(users):
        t = 0.0
        while t < seconds:
            took = latency_ms_at(t) * rng.uniform(0.95, 1.05)
            t += took / 1000.0
            t_done.append(t)
            latency.append(took)
    order = np.argsort(t_done)
    t_done, latency = np.asarray(t_done)[order], np.asarray(latency)[order]
    return t_done, latency, np.ones(t_done.size, bool)


def _marks(width: float, count: int) -> list[float]:
    return [i * width for i in range(count + 1)]


def _settle(t, latency, ok, width, count):
    return validity.settle(t, t, ok, latency, _marks(width, count), count, RULES)


def test_a_steady_run_is_stable_and_keeps_every_sub_window():
    t, latency, ok = _closed_loop(lambda t: 10.0, 12.0)
    settled = _settle(t, latency, ok, 2.0, 6)
    assert settled.stable and settled.first == 0 and settled.used == 6


def test_a_step_change_is_unstable_until_three_sub_windows_after_it_agree():
    t, latency, ok = _closed_loop(lambda t: 40.0 if t < 3.0 else 10.0, 20.0)
    assert not _settle(t, latency, ok, 2.0, 3).stable  # 40 | blend | 10: a fixed 6 s window would end here
    assert not _settle(t, latency, ok, 2.0, 4).stable  # blend | 10 | 10
    settled = _settle(t, latency, ok, 2.0, 5)
    assert settled.stable and settled.first == 2 and settled.used == 3  # the blend never joins the span
    later = _settle(t, latency, ok, 2.0, 9)
    assert later.stable and later.first == 2 and later.used == 7  # every agreeing sub-window after the change


def test_a_server_that_alternates_never_settles():
    t, latency, ok = _closed_loop(lambda t: 10.0 if int(t // 2) % 2 == 0 else 40.0, 18.0, users=4)
    for count in range(3, 7):
        settled = _settle(t, latency, ok, 3.0, count)
        assert not settled.stable and settled.first == count - 3


def test_a_run_extended_past_its_duration_is_judged_in_coarser_parts_too():
    """Sub-windows of 2 s alternating 10 and 13 ms never agree one by one, but parts of two agree: the rule a 12 s
    run would be judged by (its three thirds). A steady drift agrees at no grouping."""
    t, latency, ok = _closed_loop(lambda t: 10.0 if int(t // 2) % 2 == 0 else 13.0, 20.0)
    assert not _settle(t, latency, ok, 2.0, 3).stable and not _settle(t, latency, ok, 2.0, 5).stable
    settled = _settle(t, latency, ok, 2.0, 6)
    assert settled.stable and settled.group == 2 and settled.first == 0 and settled.used == 6
    seven = _settle(t, latency, ok, 2.0, 7)  # parts of two aligned to the end: the first sub-window is left out
    assert seven.stable and seven.group == 2 and seven.first == 1 and seven.used == 6
    window = Window(6.0, 18.0)
    assert facts(window, settled)["windows_grouped"] == 2
    fields = settling_fields(facts(window, settled), 12.0)
    assert fields["windows_grouped"] == 2 and fields["sub_window_s"] == 2.0
    drifting = _closed_loop(lambda t: 10.0 * (1.0 + 0.05 * t), 20.0)
    for count in range(3, 10):
        assert not _settle(*drifting, 2.0, count).stable


def test_noise_alone_never_counts_as_instability():
    # few samples per sub-window: p50 wobbles by more than 10%, but within what its sample count allows
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 6, 90))
    latency = rng.exponential(10.0, t.size)
    assert validity.settle(t, t, np.ones(t.size, bool), latency, _marks(2.0, 3), 3,
                           validity.Rules(stability_percent=10.0)).stable


def test_gathered_samples_judge_as_the_whole_does():
    t, latency, ok = _closed_loop(lambda t: 40.0 if t < 3.0 else 10.0, 10.0)
    gathered = Gathered()
    for chunk in np.array_split(np.arange(t.size), 7):
        gathered.add({"t": t[chunk].tolist(), "latency_ms": latency[chunk].tolist(), "ok": ok[chunk].tolist(),
                      "due": [math.nan] * chunk.size})
    window = Window(6.0, 18.0)
    assert window.width_s == 2.0 and window.max_windows == 9
    assert gathered.settle(_marks(2.0, 5), 5, RULES, open_loop=False) == _settle(t, latency, ok, 2.0, 5)


def _measured(latency_ms_at, fail_over):
    """measure_until_settled over synthetic closed-loop samples handed out one 2 s sub-window per boundary (the
    start lies in the past, so no boundary waits), at most 9 sub-windows."""
    t, latency, ok = _closed_loop(latency_ms_at, 20.0, users=50)
    window = Window(6.0, 18.0)

    started = time.perf_counter() - 100.0

    def boundary(i):
        inside = (t >= (i - 1) * 2.0) & (t < i * 2.0)
        return started + i * 2.0, [{"t": t[inside], "latency_ms": latency[inside], "ok": ok[inside],
                                    "due": t[inside] * math.nan}]
    settled, over = measure_until_settled(window, validity.Rules(stability_percent=10.0, judged_percentile=90.0),
                                          False, started, boundary, fail_over=fail_over)
    return settled, over, facts(window, settled, over)


def test_a_probe_over_its_slo_in_every_sub_window_stops_at_once():
    # never settles (it alternates and drifts 5%/s, so no grouping of sub-windows agrees); always over 200 ms
    overloaded = lambda t: (300.0 if int(t // 2) % 2 == 0 else 600.0) * (1.0 + 0.05 * t)
    settled, over, record = _measured(overloaded, fail_over=(90.0, 200.0))
    assert over and settled.count == 3 and not settled.stable and record["over_slo"] is True
    assert _measured(overloaded, fail_over=None)[0].count == 9, "without an SLO it measures to max_duration"
    # a run that crosses the SLO between sub-windows might still settle under it: it measures on
    crossing = lambda t: (100.0 if int(t // 2) % 2 == 0 else 600.0) * (1.0 + 0.03 * t)
    settled, over, record = _measured(crossing, fail_over=(90.0, 200.0))
    assert not over and settled.count == 9 and record["over_slo"] is False
    entry = {"window_s": 6.0, "requests": 300, "failures": 0, "late_ratio": 0.0, "late_tolerance_ms": 5.0,
             "generator_bound": False, "generator_cpu_percent": 20.0, "littles_law": None,
             "measured_total_s": 6.0, "over_slo": True, "max_duration_s": 18.0}
    parts = [{"p90_ms": v, "rps": 50.0, "requests": 100, "band": [380.0, 420.0]} for v in (300.0, 600.0, 300.0)]
    reasons = validity.judge(entry, parts, validity.Rules(stability_percent=10.0, judged_percentile=90.0,
                                                          min_duration_s=1.0, min_requests=10))
    unstable = [r for r in reasons if r.startswith("unstable:")]
    assert unstable and "every sub-window was already over the SLO" in unstable[0], reasons
    assert "raise benchmark.max_duration" not in unstable[0]


def test_settling_fields_say_how_long_a_run_measured():
    fields = settling_fields({"sub_window_s": 2.0, "windows_total": 5, "windows_used": 3, "stable": True,
                              "duration_s": 6.0, "max_duration_s": 18.0}, 6.0)
    assert fields["measured_s"] == 6.0 and fields["measured_total_s"] == 10.0 and fields["extended_s"] == 4.0
    plain = settling_fields({}, 6.0)  # a samples file without sub-window marks: the whole window, 3 parts
    assert plain["windows_used"] == 3 and plain["extended_s"] == 0.0 and plain["sub_window_s"] == 2.0


# ------------------------------------------------------------------------------ the confidence bound

def test_the_upper_bound_covers_the_true_p99_in_99_percent_of_trials():
    true_p99 = math.log(100.0)  # the exponential distribution's 99th percentile
    # the bound is about the q + 2.33 sqrt(q(1-q)/n) sample quantile: p99.55 at n = 2000; p99.7 is far beyond that
    true_p997 = math.log(1000.0 / 3.0)
    rng = np.random.default_rng(2026)
    bounds = [validity.upper_bound(rng.exponential(1.0, 2000), 99.0, 0.99) for _ in range(3000)]
    covered = np.mean([b >= true_p99 for b in bounds])
    print(f"covered {covered:.4f}; median bound {np.median(bounds):.3f} against p99 {true_p99:.3f}")
    assert covered >= 0.99
    assert np.mean([b < true_p997 for b in bounds]) > 0.9  # not absurdly loose: below the true p99.7 as a rule


def test_a_point_estimate_would_not_be_a_bound():
    true_p99 = math.log(100.0)
    rng = np.random.default_rng(7)
    points = [np.percentile(rng.exponential(1.0, 2000), 99) for _ in range(1000)]
    assert np.mean([p >= true_p99 for p in points]) < 0.7  # the measured p99 falls short about half the time


def test_too_few_samples_give_no_bound_and_say_why():
    assert validity.bound_samples(99.0, 0.99) == 459 and validity.bound_samples(50.0, 0.99) == 7
    assert validity.upper_bound(np.arange(458.0), 99.0, 0.99) is None
    assert validity.upper_bound(np.arange(459.0), 99.0, 0.99) == 458.0  # the maximum: 0.99^459 < 1%
    fields = bound_fields(np.arange(100.0), validity.Rules(bound_percentile=99.0))
    assert fields["p99_ms_upper"] is None and fields["p50_ms_upper"] is not None
    assert fields["upper_bound"]["reason"] == "too few answers for a 99% bound on p99: 100 measured, 459 needed"


# ------------------------------------------------------------------------------ exact float JSON

def test_float_json_reads_back_to_exactly_the_float32_values():
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.uniform(-1, 1, 5000), rng.normal(0, 1e-6, 500), rng.normal(0, 1e6, 500),
                             [0.0, -0.0, 1.0, -1.0, 1e-30, 3.4e38, np.nextafter(np.float32(1), np.float32(2))]])
    array = values.astype(np.float32).reshape(1, -1, 1)
    parsed = np.asarray(json.loads(jsonfloat.float_json(array)), np.float64).astype(np.float32)  # as a server reads
    assert parsed.shape == array.shape and np.array_equal(parsed, array)
    # and no longer than it must be: at most 9 significant digits per float32
    assert max(len(s.lstrip("-").replace(".", "").split("e")[0].strip("0")) for s in array.astype(str).ravel()) <= 9


def test_six_decimals_would_not_be_exact():
    array = np.float32([0.12345679, -0.9876543])
    rounded = np.round(array.astype(np.float64), 6).astype(np.float32)
    assert not np.array_equal(rounded, array)  # what the REST payloads sent before: a different input


def test_float_json_refuses_what_json_cannot_carry():
    with pytest.raises(jsonfloat.FloatJsonError, match="NaN or infinity"):
        jsonfloat.float_json(np.float32([1.0, np.nan]))


def test_dumps_writes_nested_bodies_with_exact_arrays():
    array = np.float32([[0.1, 0.2]])
    body = jsonfloat.dumps({"signature_name": "s", "inputs": {"x": array, "k": np.int64(3), "v": [array[0, 1]]}})
    assert body == '{"signature_name":"s","inputs":{"x":[[0.1,0.2]],"k":3,"v":[0.2]}}'


def _late_marked_run(seed: int):
    """A closed-loop run on a machine that stalls: completions at about 300/s, with pauses of up to 0.7 s in which
    nothing completes (and the boundary is marked late, when the process runs again), then the queued answers."""
    rng = np.random.default_rng(seed)
    width, count = 2.0, int(rng.integers(3, 7))
    marks = [0.0]
    for i in range(1, count + 1):
        marks.append(i * width + (rng.uniform(0.0, 0.7) if rng.random() < 0.6 else 0.0))
    t = np.sort(rng.uniform(0.0, marks[-1] + 1.0, int(300 * (marks[-1] + 1.0))))
    for mark in marks[1:]:  # nothing completes between the planned boundary and the late mark; then it all does
        planned = round(mark / width) * width
        stalled = (t >= planned) & (t < mark)
        t[stalled] = mark + rng.uniform(0.0, 0.05, int(stalled.sum()))
    t = np.sort(t)
    latency = rng.gamma(4.0, 2.5, t.size)
    return t, latency, np.ones(t.size, bool), marks, count


def test_the_final_judgment_cuts_a_run_where_its_settling_did():
    """A run is judged twice: while it measures (settle: may it stop?) and once its samples are saved (judged_parts,
    through the settled facts in the samples file). Both must cut the span at the instants the boundaries were
    marked, so a run that stopped because it settled is never then reported unstable (and the other way round),
    however late a busy machine marked its boundaries. The planned edges, which the final judgment used to take,
    disagree with the settling on some of these runs."""
    rules = validity.Rules(stability_percent=10.0, judged_percentile=50.0)
    window = Window(6.0, 30.0)
    planned_disagreed = 0
    for seed in range(40):
        t, latency, ok, marks, count = _late_marked_run(seed)
        settled = validity.settle(t, t, ok, latency, marks, count, rules)
        recorded = facts(window, settled)
        start, end = marks[settled.first], marks[settled.count]  # the samples file: times from the span's start
        inside = (t >= start) & (t < end + 1.0)
        rebased = t[inside] - start
        parts = validity.judged_parts(recorded, rebased, rebased, ok[inside], latency[inside], end - start, 50.0)
        assert len(parts) == validity.SUB_WINDOWS if not settled.stable else len(parts) >= validity.SUB_WINDOWS
        assert settled.stable == (not validity.instabilities(parts, rules)), (seed, marks, settled)
        planned = validity.sub_windows(rebased, rebased, ok[inside], latency[inside], end - start, 50.0,
                                       width_s=2.0 * settled.group)
        planned_disagreed += settled.stable != (not validity.instabilities(planned, rules))
    assert planned_disagreed, "the late marks never mattered: this test would not catch the planned edges"


def test_measuring_cuts_sub_windows_where_the_boundaries_were_marked():
    t, latency, ok, marks, _count = _late_marked_run(7)
    started = time.perf_counter() - 100.0

    def boundary(i):
        low, high = marks[i - 1], marks[i]
        inside = (t >= low) & (t < high)
        return started + high, [{"t": t[inside], "latency_ms": latency[inside], "ok": ok[inside],
                                 "due": t[inside] * math.nan}]
    window = Window(6.0, 2.0 * (len(marks) - 1))
    settled, _over = measure_until_settled(window, RULES, False, started, boundary)
    assert settled.marks == pytest.approx(marks[:settled.count + 1])
    recorded = facts(window, settled)
    assert recorded["edges_s"][0] == 0.0 and recorded["before_s"] == pytest.approx(marks[settled.first])
    assert recorded["edges_s"][-1] == pytest.approx(marks[settled.count] - marks[settled.first])
