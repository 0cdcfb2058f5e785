"""make tune's parts without a server: the space, the strategies as replays, the recommendation rule, the
batching explanation, the records, serving.tuned and the spec's tune section."""
from __future__ import annotations

import json
import textwrap

import pytest

from deploy.serving_config import ServerLayout, server_flags
from loadtests.commands.tune import label, trial_record
from loadtests.measure import tunespace
from loadtests import report
from loadtests.report import tunereport
from spec.errors import SpecError
from spec.loader import load_spec
from spec.results import TuneResult
from spec.tuning import apply_config, config_of

SPEC = textwrap.dedent("""\
    name: toy
    model:
      source: {kind: keras_application, application: MobileNetV2, weights: null}
    benchmark:
      slo: p99:200ms
    """)


def _spec(tmp_path, extra: str = "", body: str = SPEC):
    path = tmp_path / "toy.yaml"
    path.write_text(body + textwrap.dedent(extra))
    return load_spec(path)


def _trial(index, config, capacity, status="measured", queue=None, model=None, batch=None, cpu=None):
    return {"index": index, "config": tunespace.normal(config), "label": f"t{index}", "status": status,
            "capacity_rps": capacity, "valid": status == "measured", "invalid_reasons": [],
            "cells": [{"protocol": "grpc", "payload": "image_b64", "wire": "image_bytes", "capacity_rps": capacity,
                       "bracket": [capacity, None], "limited_by": None}],
            "breakdown": {"grpc image_bytes": {"queue_ms": queue, "model_ms_per_request": model,
                                               "batch_size_mean": batch, "server_core_ms_per_request": cpu}}}


def test_the_default_space_comes_from_the_machine_and_the_slo(tmp_path):
    spec = _spec(tmp_path)
    space = tunespace.derive(spec, [("grpc", "image_b64")], "embedded", log=lambda line: None, cpus=2)
    assert space.candidates("batching") == (False, True)
    assert space.candidates("max_batch_size") == (4, 8, 16, 32)
    assert space.candidates("batch_timeout_micros") == (0, 1000, 2000, 5000, 10000)
    assert space.candidates("num_batch_threads") == (1, 2)
    assert space.candidates("intra_op_parallelism") == (0, 1, 2)
    assert space.candidates("grpc_max_threads") == (0, "sized")
    assert space.candidates("rest_api_num_threads") == (0,), "no REST cell: REST threads are not searched"
    assert space.baseline == {"batching": False, "intra_op_parallelism": 0, "inter_op_parallelism": 0,
                              "rest_api_num_threads": 0, "grpc_max_threads": 0, "image": "cpu"}
    tight = _spec(tmp_path, body=SPEC.replace("p99:200ms", "p99:6ms") + "  batch_size: 8\n")
    space = tunespace.derive(tight, [("rest", "image_b64")], "embedded", log=lambda line: None, cpus=4)
    assert space.candidates("batch_timeout_micros") == (0, 1000), "at most a quarter of the SLO's 6 ms"
    assert space.candidates("max_batch_size") == (8, 16, 32), "never below the request's batch of 8"
    assert space.candidates("num_batch_threads") == (1, 4)


def test_a_listed_knob_is_held_to_its_candidates_and_bad_lists_are_spec_errors(tmp_path):
    spec = _spec(tmp_path, """\
        tune:
          batching: [true]
          max_batch_size: [16]
          budget: 90s
        """)
    assert spec.tune.budget == 90.0
    space = tunespace.derive(spec, [("grpc", "image_b64")], "embedded", log=lambda line: None, cpus=2)
    assert space.candidates("batching") == (True,) and space.candidates("max_batch_size") == (16,)
    for bad, says in (("budget: soon", "not a duration"), ("max_batch_size: [8, 8]", "more than once"),
                      ("max_batch_size: []", "at least one candidate"), ("strategy: random", "quick"),
                      ("num_batch_threads: [0]", "below 1"), ("turbo: true", "turbo")):
        with pytest.raises(SpecError) as error:
            _spec(tmp_path, f"tune:\n  {bad}\n")
        assert "toy.yaml:" in str(error.value) and says in str(error.value), (bad, str(error.value))


def _space(**values):
    defaults = {"batching": (False, True), "max_batch_size": (4, 16), "batch_timeout_micros": (2000,),
                "num_batch_threads": (2,), "max_enqueued_batches": (64,), "allowed_batch_sizes": ("any",),
                "intra_op_parallelism": (0,), "inter_op_parallelism": (0,), "rest_api_num_threads": (0,),
                "grpc_max_threads": (0,), "image": ("cpu",)}
    baseline = {"batching": False, "intra_op_parallelism": 0, "inter_op_parallelism": 0,
                "rest_api_num_threads": 0, "grpc_max_threads": 0, "image": "cpu"}
    return tunespace.Space({**defaults, **values}, baseline, 0.10)


def test_quick_search_replays_the_trials_it_has_and_follows_the_best():
    space = _space(intra_op_parallelism=(0, 1))
    first = tunespace.next_config(space, "quick", [])
    assert first == space.baseline
    trials = [_trial(1, first, 50.0)]
    second = tunespace.next_config(space, "quick", trials)
    assert second["batching"] and second["max_batch_size"] == 4, "batching on, from the first candidate"
    trials.append(_trial(2, second, 150.0))
    third = tunespace.next_config(space, "quick", trials)
    assert third["max_batch_size"] == 16 and third["batching"]
    trials.append(_trial(3, third, 155.0))  # within 10% of trial 2: not a new best
    fourth = tunespace.next_config(space, "quick", trials)
    assert fourth == dict(second, intra_op_parallelism=1), "the serving knobs start from the best (trial 2)"
    trials.append(_trial(4, fourth, 20.0, status="pruned"))
    assert tunespace.next_config(space, "quick", trials) is None
    assert tunereport.best_trial(trials, 0.10)["index"] == 3, "the recommendation is the highest capacity"


def test_a_gain_inside_min_gain_keeps_the_baseline_and_the_grid_covers_every_combination():
    space = _space()
    trials = [_trial(1, space.baseline, 100.0), _trial(2, dict(space.baseline, batching=True, max_batch_size=4,
                                                               batch_timeout_micros=2000, num_batch_threads=2,
                                                               max_enqueued_batches=64, allowed_batch_sizes="any"),
                                                         108.0)]
    assert tunereport.best_trial(trials, 0.10)["index"] == 1
    assert tunereport.best_trial(trials, 0.05)["index"] == 2
    grid = space.grid()
    assert grid[0] == space.baseline and len(grid) == 3, grid  # off; on with 4; on with 16
    assert all("max_batch_size" not in c for c in grid if not c["batching"])
    done = [_trial(i + 1, c, 10.0) for i, c in enumerate(grid[:2])]
    assert tunespace.next_config(space, "grid", done) == grid[2]


def test_a_gain_must_exceed_the_capacity_searchs_precision_too(tmp_path):
    """A capacity is bracketed to within benchmark.precision: a smaller difference between two trials is not
    measured, so it cannot make a recommendation, whatever tune.min_gain says."""
    lines = []
    coarse = _spec(tmp_path, body=SPEC + "  precision: 20%\n")
    space = tunespace.derive(coarse, [("grpc", "image_b64")], "embedded", log=lines.append, cpus=2)
    assert space.min_gain == pytest.approx(0.20), space.min_gain
    assert any("more than 20% (benchmark.precision)" in line for line in lines), lines
    fine = _spec(tmp_path, body=SPEC + "  precision: 5%\n")
    lines.clear()
    assert tunespace.derive(fine, [("grpc", "image_b64")], "embedded", log=lines.append, cpus=2).min_gain == 0.10
    assert not any("benchmark.precision" in line for line in lines)
    trials = [_trial(1, space.baseline, 100.0), _trial(2, dict(space.baseline, batching=True, max_batch_size=8,
                                                               batch_timeout_micros=1000, num_batch_threads=1),
                                                         118.0)]
    assert tunereport.best_trial(trials, space.min_gain)["index"] == 1, "18% is inside a 20% bracket"


def test_sized_thread_counts_follow_the_baselines_requests_in_flight():
    space = _space(grpc_max_threads=(0, "sized"))
    cells = [{"protocol": "grpc", "capacity_rps": 300.0}]
    assert tunespace.sized(space, cells, 200.0, cpus=2).candidates("grpc_max_threads") == (0, 120)
    assert tunespace.sized(space, [{"protocol": "grpc", "capacity_rps": 1.0}], 200.0,
                           cpus=2).candidates("grpc_max_threads") == (0, 2), "never fewer than the CPUs"


def test_the_batching_explanation_reads_the_breakdown():
    space = _space()
    on = dict(space.baseline, batching=True, max_batch_size=16, batch_timeout_micros=5000, num_batch_threads=1,
              max_enqueued_batches=64, allowed_batch_sizes="any")
    no_gain = [_trial(1, space.baseline, 100.0, model=7.0), _trial(2, on, 80.0, queue=4.2, model=6.9, batch=2.1)]
    best = tunereport.best_trial(no_gain, 0.10)
    verdict = tunereport.batching_verdict(no_gain, best, no_gain[0], 0.10)
    assert not verdict["recommended"]
    assert "4.2 ms in the batching queue" in verdict["why"] and "queue time without a runtime gain" in verdict["why"]
    assert "model time per request 7.0 ms without" in verdict["why"], "no CPU figures: the model time"
    pays = [_trial(1, space.baseline, 100.0, model=9.0), _trial(2, on, 300.0, queue=2.0, model=1.5, batch=9.0)]
    verdict = tunereport.batching_verdict(pays, tunereport.best_trial(pays, 0.10), pays[0], 0.10)
    assert verdict["recommended"] and "6.00x less" in verdict["why"] and "batches of 9.0" in verdict["why"]
    # under load unbatched requests share the cores: their model time is long, their CPU cost is what counts
    loaded = [_trial(1, space.baseline, 220.0, model=30.7, cpu=8.2),
              _trial(2, on, 156.0, queue=5.2, model=6.0, batch=2.2, cpu=8.0)]
    verdict = tunereport.batching_verdict(loaded, tunereport.best_trial(loaded, 0.10), loaded[0], 0.10)
    assert not verdict["recommended"] and verdict["cost_measure"] == "server_core_ms_per_request"
    assert "server CPU per request 8.2 core-ms without batching against 8.0" in verdict["why"]
    assert "queue time without a runtime gain" in verdict["why"]


def test_a_pruned_batching_trial_is_explained_in_a_sentence():
    """A batching trial pruned at its first probes has no capacity: the verdict says where it missed the SLO and
    what the baseline met (a CI run of the compute-bound model: pruned at 23.7 req/s against 33.8 without)."""
    space = _space()
    on = dict(space.baseline, batching=True, max_batch_size=8, batch_timeout_micros=5000, num_batch_threads=1,
              max_enqueued_batches=64, allowed_batch_sizes="any")
    pruned = _trial(2, on, None, status="pruned", queue=20.9, batch=1.4, cpu=53.0)
    pruned["pruned_below_rps"] = {"grpc image_b64": 23.7}
    trials = [_trial(1, space.baseline, 33.8, cpu=47.5), pruned]
    verdict = tunereport.batching_verdict(trials, tunereport.best_trial(trials, 0.20), trials[0], 0.20)
    assert not verdict["recommended"]
    assert ("(#2: t2) was pruned: it missed the SLO at 23.7 req/s, where 33.8 req/s met it without batching; its "
            "requests waited 20.9 ms in the batching queue") in verdict["why"], verdict["why"]
    assert "1.12x more" in verdict["why"] and "queue time without a runtime gain" in verdict["why"]


def test_a_gain_over_a_lower_bound_is_not_a_gain_shown():
    """A baseline whose search stopped where the generator could not keep up (a local run: 64.9 req/s passed,
    129.8 late and failed) may really serve anything below 129.8: a batching trial at 79.5 req/s (1.22x, past a
    20% min_gain) that costs more CPU per request is not a recommendation; one above 129.8 is."""
    space = _space()
    on = dict(space.baseline, batching=True, max_batch_size=8, batch_timeout_micros=5000, num_batch_threads=1,
              max_enqueued_batches=64, allowed_batch_sizes="any")
    baseline = _trial(1, space.baseline, 64.9, status="limited", cpu=13.8)
    baseline["cells"][0].update(bracket=[64.9, 129.8], limited_by="generator")
    assert tunespace.ceiling(baseline) == pytest.approx(129.8)
    slower_cpu = [baseline, _trial(2, on, 79.5, queue=7.7, batch=1.8, cpu=14.2)]
    best = tunereport.best_trial(slower_cpu, 0.20)
    assert best["index"] == 1
    verdict = tunereport.batching_verdict(slower_cpu, best, baseline, 0.20)
    assert not verdict["recommended"] and "1.03x more" in verdict["why"], verdict["why"]
    assert "64.9 req/s without batching is a lower bound" in verdict["why"] and "below 129.8" in verdict["why"]
    past = [baseline, _trial(2, on, 140.0, queue=3.0, batch=4.0, cpu=13.0)]
    assert tunereport.best_trial(past, 0.20)["index"] == 2, "above where the baseline may lie: a gain shown"
    # below that ceiling, a capacity gain with a matching fall in CPU per request is a gain shown (the weight-bound
    # model in a CI run: 197 req/s against a baseline limited within [112.7, 225.4], 1.38x less CPU per request)
    cheaper = [baseline, _trial(2, on, 100.0, queue=3.0, batch=2.0, cpu=10.0)]
    assert tunespace.cost_gain(cheaper[1], baseline) == pytest.approx(1.38)
    assert tunereport.best_trial(cheaper, 0.20)["index"] == 2
    # a limited cell that passed where the generator fell behind has no known ceiling: only a cost gain beats it
    baseline["cells"][0]["bracket"] = [64.9, None]
    assert tunespace.ceiling(baseline) == float("inf") and tunereport.best_trial(past, 0.20)["index"] == 1
    assert tunereport.best_trial(cheaper, 0.20)["index"] == 2
    # a measured (not limited) baseline is its own ceiling: the min_gain bar alone decides
    measured = _trial(1, space.baseline, 64.9)
    assert tunereport.best_trial([measured, slower_cpu[1]], 0.20)["index"] == 2


def test_a_trial_record_says_pruned_limited_or_failed():
    slo = type("Slo", (), {"key": "p99_ms"})()
    baseline = {"batching": False}
    on = {"batching": True, "max_batch_size": 8, "batch_timeout_micros": 0, "num_batch_threads": 1,
          "max_enqueued_batches": 4, "allowed_batch_sizes": "any"}

    def result(limited_by, capacity, probes=()):
        return {"protocol": "grpc", "payload": "image_b64", "wire": "image_bytes", "capacity_rps": capacity,
                "bracket": [capacity or None, 40.0], "limited_by": limited_by, "probes": list(probes)}
    passing = {"offered_rps": 30.0, "achieved_rps": 29.5, "p99_ms": 80.0, "meets_slo": True,
               "breakdown": {"queue_ms": 1.0, "model_ms": 8.0}, "batch_size_mean": 4.0}
    cells = [("grpc", "image_b64")]
    ok = trial_record(2, on, baseline, [result(None, 30.0, [passing])], False, slo, 0.0, "d", cells)
    assert ok["status"] == "measured" and ok["capacity_rps"] == 30.0 and ok["valid"]
    assert ok["breakdown"]["grpc image_bytes"]["model_ms_per_request"] == 2.0
    pruned = trial_record(3, on, baseline, [result("pruned", 0.0)], False, slo, 0.0, "d", cells)
    assert pruned["status"] == "pruned" and pruned["capacity_rps"] is None and pruned["pruned_below_rps"]
    limited = trial_record(4, on, baseline, [result("generator", 30.0, [passing])], False, slo,
                           0.0, "d", cells)
    assert limited["status"] == "limited" and not limited["valid"] and limited["capacity_rps"] == 30.0
    failed = trial_record(5, on, baseline, [], False, slo, 0.0, "d", cells, error="DeployError: x")
    assert failed["status"] == "failed" and tunespace.score(failed) is None


def test_labels_say_what_changed():
    base = {"batching": False, "intra_op_parallelism": 0, "grpc_max_threads": 0}
    assert label(base, base) == "the baseline (the spec's configuration)"
    on = dict(base, batching=True, max_batch_size=16, batch_timeout_micros=2000, num_batch_threads=2,
              max_enqueued_batches=64, allowed_batch_sizes="any", grpc_max_threads=24)
    assert label(on, base) == ("batching max_batch_size 16, timeout 2 ms, 2 threads, queue 64; gRPC threads 24")


def test_configs_round_trip_and_reach_the_server_flags(tmp_path):
    spec = _spec(tmp_path)
    config = dict(config_of(spec.serving), batching=True, max_batch_size=16, batch_timeout_micros=1000,
                  num_batch_threads=2, max_enqueued_batches=8, allowed_batch_sizes="powers_of_two",
                  rest_api_num_threads=12, grpc_max_threads=6)
    serving = apply_config(spec.serving, config)
    assert serving.batching.allowed_batch_sizes == (1, 2, 4, 8, 16)
    assert config_of(serving) == config
    tuned = spec.model_copy(update={"serving": serving})
    flags = server_flags(tuned, ServerLayout.in_image(tuned), embedded=False)
    assert "--enable_batching=true" in flags and "--rest_api_num_threads=12" in flags
    assert "--grpc_max_threads=6" in flags
    assert not any("threads" in f for f in server_flags(spec, ServerLayout.in_image(spec), embedded=False))


CHECKPOINT = {"model": "toy", "key": "k1", "complete": True, "trials": []}  # what every tune.json holds


def test_serving_tuned_applies_the_latest_recommendation(tmp_path):
    body = SPEC + "serving:\n  tuned: latest\n"
    with pytest.raises(SpecError) as error:
        _spec(tmp_path, body=body)
    assert "toy.yaml:" in str(error.value) and "make tune" in str(error.value)
    latest = tmp_path.parent / "reports" / "toy" / "tune" / "latest"
    latest.mkdir(parents=True, exist_ok=True)
    config = {"batching": True, "max_batch_size": 8, "batch_timeout_micros": 1000, "num_batch_threads": 2,
              "max_enqueued_batches": 64, "allowed_batch_sizes": "any", "intra_op_parallelism": 0,
              "inter_op_parallelism": 0, "rest_api_num_threads": 0, "grpc_max_threads": 0, "image": "cpu"}
    (latest / "tune.json").write_text(json.dumps({**CHECKPOINT, "model": "toy", "best": {"config": config}}))
    spec = _spec(tmp_path, body=body)
    assert spec.serving.batching.enabled and spec.serving.batching.max_batch_size == 8
    assert spec.tuned_from == latest / "tune.json"
    assert not load_spec(tmp_path / "toy.yaml", tuned=False).serving.batching.enabled
    (latest / "tune.json").write_text(json.dumps({**CHECKPOINT, "model": "other", "best": {"config": config}}))
    with pytest.raises(SpecError, match="tuned model 'other'"):
        _spec(tmp_path, body=body)
    (latest / "tune.json").write_text(json.dumps({**CHECKPOINT, "model": "toy", "best": None}))
    with pytest.raises(SpecError, match="no recommendation"):
        _spec(tmp_path, body=body)
    (latest / "tune.json").write_text(json.dumps({**CHECKPOINT, "schema_version": 99, "best": {"config": config}}))
    with pytest.raises(SpecError, match="serving.tuned: .*tune.json: written by a newer tfsb .schema_version 99"):
        _spec(tmp_path, body=body)


def test_the_headline_says_what_the_best_buys_even_when_the_default_met_the_slo_at_no_rate():
    best = {"label": "batching max_batch_size 16", "capacity_rps": 40.0, "gain": None, "lower_bound": False,
            "is_baseline": False}
    result = {"best": best, "slo_text": "p99 <= 20 ms", "trials": [], "min_gain": 0.1}
    assert tunereport.headline(result) == ("batching max_batch_size 16: 40.0 req/s at p99 <= 20 ms, where the "
                                           "default met the SLO at no rate")
    best.update(gain=3.14, lower_bound=True)
    assert tunereport.headline(result).startswith("batching max_batch_size 16: 3.1x the default's capacity")
    assert "lower bound" in tunereport.headline(result)


def test_a_checkpoint_is_rewritten_whole(tmp_path):
    result = {"model": "toy", "key": "k1", "complete": False, "slo": {"percentile": 99.0, "latency_ms": 200.0},
              "slo_text": "p99 <= 200 ms", "strategy": "quick", "backend": "embedded", "elapsed_s": 1.0,
              "budget_s": 60.0, "stopped_by": None, "trials": [], "best": None, "pareto": [],
              "baseline": None, "headline": "h", "batching": {"why": "w"}, "min_gain": 0.1,
              "coverage": {"trials": 0, "grid_size": None}, "nan": float("nan")}
    tunereport.write(TuneResult.made(result), tmp_path)
    written = json.loads((tmp_path / "tune.json").read_text())
    assert written["nan"] is None and not (tmp_path / "tune.json.partial").exists()
    page = (tmp_path / "tune.html").read_text()
    assert "unfinished" in page and (report.assets() / "report.css").read_text() in page  # the one shell and style
    assert "<p class=headline id=headline>h</p>" in page


def test_a_search_resumes_from_an_older_checkpoint_but_not_from_a_newer_tfsbs(tmp_path):
    from loadtests.commands.tune import _resumable

    spec = _spec(tmp_path)
    latest = tmp_path.parent / "reports" / "toy" / "tune" / "latest"
    latest.mkdir(parents=True, exist_ok=True)
    said = []
    (latest / "tune.json").write_text(json.dumps({"model": "toy", "complete": False, "key": "k1", "trials": []}))
    assert _resumable(spec, "k1", said.append)["key"] == "k1" and not said  # written before schema_version
    (latest / "tune.json").write_text(json.dumps({"schema_version": 99, "complete": False, "key": "k1"}))
    assert _resumable(spec, "k1", said.append) is None
    assert len(said) == 1 and "not resuming" in said[0] and "written by a newer tfsb" in said[0], said
