"""make lifecycle's pieces on known inputs: the warmup file's records, the copy without them, when the first requests
stop being slow, what the server's metrics and log say about the warmup, the verdict in words, the thresholds, the
typed result, its page and the command's one-line mistakes."""
from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib

import pytest

from loadtests.commands import lifecycle as command
from loadtests.measure import coldstart, density, openload, swap
from loadtests.report import lifecyclepage
from server.dataplane import WARMUP_FILE
from spec import lifecycle as rules
from spec.results import ColdStartVariant, LifecycleResult
from tests.conftest import REPO


def _tfrecords(path, records) -> None:
    """TFRecord framing by hand: length, a CRC of it, the data, a CRC of it (the CRCs are not checked here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for data in records:
            out.write(struct.pack("<Q", len(data)) + struct.pack("<I", zlib.crc32(data)) + data
                      + struct.pack("<I", zlib.crc32(data)))


def test_the_warmup_files_records_are_counted(tmp_path):
    version = tmp_path / "models" / "m" / "3"
    version.mkdir(parents=True)
    assert coldstart.warmup_records(version) is None
    _tfrecords(version / WARMUP_FILE, [b"a" * 10, b"", b"b" * 300])
    assert coldstart.warmup_records(version) == 3


def test_the_copy_without_warmup_keeps_the_exports_layout_and_everything_else(tmp_path):
    version = tmp_path / "models" / "m" / "3"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "assets.extra" / "other").parent.mkdir(parents=True)
    (version / "assets.extra" / "other").write_text("kept")
    _tfrecords(version / WARMUP_FILE, [b"x"])
    base = coldstart.without_warmup(version, tmp_path / "copy")
    copied = base / "m" / "3"
    assert base == tmp_path / "copy" and (copied / "saved_model.pb").read_bytes() == b"graph"
    assert (copied / "variables" / "variables.index").is_file() and (copied / "assets.extra" / "other").is_file()
    assert not (copied / WARMUP_FILE).exists() and coldstart.warmup_records(copied) is None
    assert coldstart.warmup_records(version) == 1, "the export itself is untouched"


@pytest.mark.parametrize("latencies, expected", [
    ([100.0] + [2.0] * 30, 1),                 # only the first is slow
    ([50.0] * 6 + [2.0] * 30, 6),              # six slow, then settled
    ([2.0] * 5 + [40.0] + [2.0] * 30, 0),      # one slow request later on is noise, not a slow start
    ([9.0] * 40, 40),                          # never within 1.5x the steady p50
    ([2.0] * 40, 0),
])
def test_slow_first_requests_are_counted_until_latency_settles(latencies, expected):
    assert coldstart.slow_requests(latencies, 2.0, 1.5) == expected


def test_the_servers_metrics_and_log_say_whether_the_warmup_ran():
    metrics = "\n".join([
        "# TYPE :tensorflow:serving:model_warmup_latency histogram",
        ':tensorflow:serving:model_warmup_latency_count{model_path="/m/1",status="OK"} 1',
        ':tensorflow:serving:model_warmup_latency_sum{model_path="/m/1",status="OK"} 163000',
        ':tensorflow:serving:model_warmup_latency_count{model_path="/m/2",status="DATA_LOSS: bad"} 1',
        ':tensorflow:cc:saved_model:load_latency{model_path="/m/1"} 130000'])
    logs = "x\nFinished reading warmup data for model at /m/1/assets.extra/tf_serving_warmup_requests. " \
           "Number of warmup records read: 8.\n"
    facts = coldstart.read_facts(metrics, logs)
    assert facts["warmup_runs"] == 1 and facts["warmup_ms"] == 163.0 and facts["load_ms"] == 130.0
    assert facts["warmup_records_read"] == 8
    nothing = coldstart.read_facts(':tensorflow:cc:saved_model:load_latency{model_path="/m/1"} 1000', "")
    assert nothing["warmup_runs"] == 0 and nothing["warmup_records_read"] is None and nothing["load_ms"] == 1.0


def _variant(name, runs, read=None, **median):
    starts = tuple({"warmup_runs": r, "warmup_records_read": read} for r in runs)
    return ColdStartVariant(name=name, base_path="/m", warmup_file=name == coldstart.AS_EXPORTED, starts=starts,
                            median={"available_s": 4.0, "first_answer_s": 4.1, "first_request_ms": 3.0,
                                    "steady_p50_ms": 2.0, "slow_requests": 0, "memory_peak_mb": 600.0, **median})


def test_the_warmup_verdict_says_plainly_whether_it_was_used():
    used = coldstart.warmup_verdict(8, [_variant(coldstart.AS_EXPORTED, [1, 1], 8),
                                      _variant(coldstart.WITHOUT_WARMUP, [0, 0])])
    assert used["used"] is True and "8 warmup records" in used["text"] and "8 records read" in used["text"]
    ignored = coldstart.warmup_verdict(8, [_variant(coldstart.AS_EXPORTED, [0, 0]), _variant(coldstart.WITHOUT_WARMUP, [0])])
    assert ignored["used"] is False and ignored["text"].startswith("NOT USED") and "ignored the file" in ignored["text"]
    partly = coldstart.warmup_verdict(8, [_variant(coldstart.AS_EXPORTED, [1, 0])])
    assert partly["used"] is False, "a start that did not warm up is a warmup not used"
    none = coldstart.warmup_verdict(None, [_variant(coldstart.AS_EXPORTED, [0])])
    assert none["used"] is None and "has no warmup records" in none["text"]
    stray = coldstart.warmup_verdict(8, [_variant(coldstart.AS_EXPORTED, [1], 8), _variant(coldstart.WITHOUT_WARMUP, [1])])
    assert "warmed up too" in stray["text"]


def test_lifecycle_thresholds_parse_and_judge_the_figures():
    parsed = rules.parse({"available_s": "< 5", "first_request_ms": ["< 10", "> 0"]})
    assert [r.name for r in parsed] == ["available_s < 5", "first_request_ms < 10", "first_request_ms > 0"]
    verdicts = rules.evaluate(parsed, {"available_s": 6.0, "first_request_ms": 3.0})
    assert [v["passed"] for v in verdicts] == [False, True, True]
    missing = rules.evaluate(rules.parse({"memory_mb": "< 100"}), {})
    assert missing[0]["passed"] is False and missing[0]["note"] == "no value measured"
    with pytest.raises(ValueError, match="unknown metric 'p99_ms'; thresholds can be set on ports_open_s"):
        rules.parse({"p99_ms": "< 3"})
    with pytest.raises(ValueError, match="is not a threshold"):
        rules.parse({"available_s": "fast"})


def _result(**more) -> LifecycleResult:
    variants = (_variant(coldstart.AS_EXPORTED, [1], 8),
                _variant(coldstart.WITHOUT_WARMUP, [0], first_request_ms=90.0))
    variants = tuple(ColdStartVariant(**{**{f: getattr(v, f) for f in ("name", "base_path", "warmup_file", "median")},
                                         "starts": tuple({**s, "ports_open_s": 1.0, "available_s": 2.0,
                                                          "first_answer_s": 2.5, "first_requests_ms": [9.0, 2.0, 2.0]}
                                                         for s in v.starts)}) for v in variants)
    result = LifecycleResult(model="m", created="2026-12-06T00:00:00+00:00", report_dir="/r", backend="embedded",
                             settings={"repeats": 1, "first_requests": 3, "payload": "image_b64"},
                             provenance={"server": "ours"}, warmup_records=8,
                             warmup=coldstart.warmup_verdict(8, list(variants)), cold_start=variants, headline="",
                             **{"parts": ("cold_start",), **more})
    return dataclasses.replace(result, headline=lifecyclepage.headline(result))


def test_the_result_reads_back_whole_and_its_page_draws_every_start(tmp_path):
    result = _result(thresholds=({"threshold": "available_s < 1", "passed": False, "value": 4.0},),
                     thresholds_passed=False)
    data = json.loads(result.to_json())
    assert data["schema_version"] and LifecycleResult.from_dict(data, "lifecycle.json").to_dict() == data
    assert "first request 90.0 ms" in result.headline and result.headline.endswith("Warmup: used.")
    charts = lifecyclepage.chart_data(result)["coldstart"]
    assert [g["label"] for g in charts["groups"]] == [coldstart.AS_EXPORTED, coldstart.WITHOUT_WARMUP]
    phases = charts["groups"][0]["bars"][0]["parts"]
    assert [round(p["value"], 3) for p in phases] == [1.0, 1.0, 0.5], "each phase from the end of the one before"
    assert [len(s["points"]) for s in charts["first"]] == [3, 3] and charts["first"][1]["dash"]
    lifecyclepage.write(result, tmp_path)
    page = (tmp_path / "lifecycle.html").read_text()
    assert "FAILED: available_s &lt; 1" in page and "chart-first" in page and "chart-coldstart" in page
    assert "FAILED: available_s < 1" in lifecyclepage.terminal(result)


def test_the_commands_mistakes_are_one_line(capsys):
    spec = str(REPO / "specs" / "digits_cnn.yaml")
    for argv, expected in ((["--spec", spec, "--parts", "swap,warm"], "--parts 'swap,warm': warm is not a part"),
                           (["--spec", spec, "--repeats", "0"], "--repeats='0'"),
                           (["--spec", spec, "--first-requests", "many"], "--first-requests='many'"),
                           (["--spec", spec, "--rate", "fast"], "--rate='fast': Value error, 'fast' is not a rate"),
                           (["--spec", spec, "--rate", "9000"], "9000 req/s x 1 model(s) is 9000 req/s: more than"),
                           (["--spec", spec, "--memory-limit", "lots"], "--memory-limit='lots'"),
                           (["--spec", spec, "--max-models", "0"], "--max-models='0'"),
                           (["--spec", spec, "--parts", "swap", "--rate", "50%", "--output-dir", "/nonexistent/x"],
                            "no make capacity result for gRPC image_b64 of digits_cnn"),
                           (["--spec", spec, "--swap-compare", "num_load_threads"],
                            "--swap-compare 'num_load_threads': 'num_load_threads' is not key=value"),
                           (["--spec", spec, "--swap-compare", "threads=4"],
                            "--swap-compare 'threads=4': 'threads' is not a setting the swap compares; the "
                            "settings: name, num_load_threads, file_system_poll_wait_seconds, warmup"),
                           (["--spec", spec, "--swap-compare", "warmup=false;warmup=false"],
                            "warmup=false is compared twice"),
                           (["--spec", spec, "--swap-compare", "num_load_threads=-1"],
                            "greater than or equal to 0"),
                           (["--spec", spec, "--swap-compare", "name=x"], "a setting to compare changes"),
                           (["--spec", spec, "--parts", "density", "--swap-compare", "warmup=false"],
                            "--swap-compare compares settings of the swap part, which is not among the parts "
                            "measured (density)"),
                           (["--spec", str(REPO / "specs" / "nope.yaml")], "nope.yaml")):
        assert command.main_lifecycle(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], err


def _answer(model, due, version, ok=True, latency=0.002, sent=None):
    return openload.Answer(model, due, due if sent is None else sent, due + latency, ok, version)


def _swap(answers, copy_at=1.0):
    return {"answers": answers, "markers": {"copy": copy_at, "end": max(a.due for a in answers)},
            "old_version": 1, "new_version": 2, "late": 0, "sent": len(answers)}


def test_a_swap_is_judged_per_model_spike_switchover_and_failures():
    # the swapped model: 2 ms, then 20 ms for 0.5 s after the copy, then 2 ms; version 2 answers from t = 1.6;
    # the neighbour stays at 2 ms on its one version
    answers = []
    for k in range(300):
        t = k * 0.01
        slow = 1.0 <= t < 1.5
        answers.append(_answer("m", t, 1 if t < 1.6 else 2, latency=0.020 if slow else 0.002))
        answers.append(_answer("n", t + 0.005, 1))
    judged = swap.verdict(_swap(answers), ["m", "n"], "m", 0.25)
    m, n = judged["m"], judged["n"]
    assert m["baseline_p99_ms"] == pytest.approx(2.0) and m["peak_p99_ms"] == pytest.approx(20.0)
    assert m["spike_buckets"] == 2 and m["spike_ms"] == pytest.approx(500.0)
    assert m["versions"] == [1, 2] and m["old_after_switch"] == 0 and m["switches"] == 1
    assert m["copy_to_new_answer_s"] == pytest.approx(0.602) and m["failures"] == 0
    assert n["spike_buckets"] == 0 and n["spike_ms"] == 0 and n["versions"] == [1] and "switches" not in n
    # a request sent after the new version answered, answered by the old one: counted, never hidden
    stale = answers + [_answer("m", 1.7, 1, sent=1.7)]
    assert swap.verdict(_swap(stale), ["m"], "m", 0.25)["m"]["old_after_switch"] == 1
    failed = answers + [openload.Answer("m", 1.2, 1.2, 1.3, False, None, error="UNAVAILABLE: x")]
    judged = swap.verdict(_swap(failed), ["m"], "m", 0.25)["m"]
    assert judged["failures"] == 1 and judged["failure_reasons"] == ["UNAVAILABLE: x"]
    never = swap.switchover([_answer("m", 0.1, 1)], 1, 2, 0.0)
    assert never["copy_to_new_answer_s"] is None and never["switches"] == 0


def test_buckets_hold_each_versions_answers_and_late_starts():
    answers = [_answer("m", 0.1, 1), _answer("m", 0.2, 2), openload.Answer("m", 0.3, 0.31, 0.32, True, 2, True),
               _answer("m", 0.6, 2), openload.Answer("m", 0.7, 0.7, 0.8, False, None)]
    series = openload.buckets(answers, "m", 0.5, 1.0)
    assert [b["requests"] for b in series] == [3, 2] and series[0]["versions"] == {"1": 1, "2": 2}
    assert series[0]["late"] == 1 and series[1]["failures"] == 1 and series[1]["versions"] == {"2": 1}
    assert series[0]["p99_ms"] == pytest.approx(19.64), "latency counts from the due time (20 ms, not 10)"


def _step(models, memory, slo_met=True, failures=0, warmup_failures=()):
    return {"models": models, "memory_available_mb": memory - 5 * models, "memory_warm_mb": memory - 2,
            "memory_peak_mb": memory, "failures": failures, "slo_met": slo_met,
            "warmup_failures": list(warmup_failures)}


def test_density_says_how_many_copies_fit_and_why_no_more():
    steps = [_step(1, 600.0), _step(2, 650.0), _step(3, 700.0), _step(4, 750.0)]
    free = density.answer(steps, None, 12.0, 99.0)
    assert free["fits"] == 4 and free["limited_by"] is None
    assert free["per_copy_peak_mb"] == pytest.approx(50.0) and free["saved_model_mb"] == 12.0
    capped = density.answer(steps, 680.0, 12.0, 99.0)
    assert capped["fits"] == 2 and capped["limited_by"].startswith("memory: 3 copies held 700 MiB")
    slow = density.answer([_step(1, 600.0), _step(2, 650.0, slo_met=False), _step(3, 700.0)], None, 1.0, 99.0)
    assert slow["fits"] == 1 and slow["limited_by"] == "the SLO: 2 copies missed it"
    assert density.answer([_step(1, 600.0, failures=3)], None, 1.0, 99.0)["fits"] == 0
    assert density.per_copy_mb([_step(1, 600.0)], "memory_peak_mb") is None
    # after load, after warmup, under load: a slope each
    assert (free["per_copy_available_mb"], free["per_copy_warm_mb"]) == (pytest.approx(45.0), pytest.approx(50.0))
    assert "each copy adds 50 MiB under load (45 MiB once loaded, 50 MiB once warmed up) against 12.0 MiB on disk" \
        in lifecyclepage.density_sentence(free)
    cold = density.answer([_step(1, 600.0), _step(2, 650.0, warmup_failures=["m_copy2: INTERNAL: x"])], None, 1.0,
                          99.0)
    assert cold["fits"] == 1 and cold["limited_by"] == "failures: warming up 2 copies failed (m_copy2: INTERNAL: x)"


def test_the_warmup_records_are_replayed_to_each_copy_by_name(tmp_path):
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m", signature_name="serving_default"))
    request.model_spec.version.value = 7
    request.inputs["x"].string_val.append(b"image")
    logs = [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)),
            prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog())]  # not a Predict: left
    _tfrecords(tmp_path / "1" / WARMUP_FILE, [log.SerializeToString() for log in logs] * 2)
    [first, second] = coldstart.warmup_predict_requests(tmp_path / "1", "m_copy3")
    assert first == second and first.model_spec.name == "m_copy3" and not first.model_spec.HasField("version")
    assert first.model_spec.signature_name == "serving_default" and first.inputs["x"].string_val == [b"image"]
    assert coldstart.warmup_records(tmp_path / "1") == 4 and coldstart.warmup_predict_requests(tmp_path, "m") == []


def test_density_serves_each_copy_under_its_own_name(tmp_path):
    from spec.loader import load_spec

    version = tmp_path / "models" / "m" / "3"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"g")
    spec = load_spec(REPO / "specs" / "digits_cnn.yaml")
    three = density.copies_spec(spec, version, 3, tmp_path / "staged")
    assert [s.name for s in three.served] == ["digits_cnn", "digits_cnn_copy2", "digits_cnn_copy3"]
    for served in three.served:
        assert (served.model_dir / "3" / "saved_model.pb").read_bytes() == b"g"
    assert math.isclose(density.disk_mb(version), 1 / (1024 * 1024))


def test_lifecycle_thresholds_on_a_part_that_did_not_run_are_not_evaluated():
    verdicts = rules.evaluate(rules.parse({"swap_failures": "< 1", "available_s": "< 9"}), {"available_s": 3.0},
                              ("cold_start",))
    assert [v["passed"] for v in verdicts] == [None, True]
    assert verdicts[0]["note"] == "not evaluated: the swap part did not run"
    figures = command.figures({"swap": {"models": {"m": {"failures": 1, "spike_ms": 250.0, "peak_p99_ms": 9.0,
                                                         "copy_to_new_answer_s": 0.8},
                                                   "n": {"failures": 0, "spike_ms": 500.0, "peak_p99_ms": None}}},
                               "density": {"fits": 3, "per_copy_peak_mb": 7.5}})
    assert figures == {"copy_to_answer_s": 0.8, "swap_failures": 1, "swap_spike_ms": 500.0, "swap_peak_p99_ms": 9.0,
                       "density_models": 3, "memory_per_copy_mb": 7.5}


def test_swap_settings_to_compare_are_read_labelled_and_checked_before_any_server(tmp_path):
    from spec.loader import load_spec

    assert rules.parse_settings("num_load_threads=4; warmup=false,file_system_poll_wait_seconds=3;") == [
        {"num_load_threads": "4"}, {"warmup": "false", "file_system_poll_wait_seconds": "3"}]
    settings = rules.SwapSpec.model_validate({"compare": rules.parse_settings(
        "num_load_threads=4;warmup=false,file_system_poll_wait_seconds=3")}).compare
    assert [s.label for s in settings] == ["num_load_threads=4", "file_system_poll_wait_seconds=3, warmup=false"]
    assert settings[1].changes() == {"file_system_poll_wait_seconds": 3, "warmup": False}
    spec = load_spec(REPO / "specs" / "digits_cnn.yaml")
    bare = tmp_path / "digits_cnn" / "1"
    bare.mkdir(parents=True)  # an export without warmup records
    def with_compare(compare, **swap_keys):
        section = spec.lifecycle.model_copy(update={"swap": rules.SwapSpec.model_validate(
            {"compare": compare, **swap_keys})})
        return spec.model_copy(update={"lifecycle": section})
    swap.check_settings(with_compare([{"num_load_threads": 2}]), bare)  # nothing to refuse
    for warmup, said in ((True, "with"), (False, "without")):
        with pytest.raises(swap.UsageError, match=f"delivers the new version {said} the export's warmup records, "
                           "but .* has none, so there is nothing to compare"):
            swap.check_settings(with_compare([{"warmup": warmup}]), bare)
    _tfrecords(bare / WARMUP_FILE, [b"x"])
    swap.check_settings(with_compare([{"warmup": True}, {"warmup": False}]), bare)
    with pytest.raises(swap.UsageError, match="polls every 30 s, but the swap waits only lifecycle.swap.timeout=20 s"):
        swap.check_settings(with_compare([{"file_system_poll_wait_seconds": 30}], timeout="20s"), bare)


def test_the_page_compares_the_swap_across_settings():
    def run(setting, slow_ms, answered_at):
        answers = [_answer("m", k * 0.01, 1 if k * 0.01 < answered_at else 2,
                           latency=slow_ms / 1000 if 1.0 <= k * 0.01 < 1.5 else 0.002) for k in range(300)]
        answers += [_answer("n", k * 0.01 + 0.005, 1) for k in range(300)]
        measured = _swap(answers)
        return {"rate_per_model": 50.0, "rate_source": "lifecycle.swap.rate", "markers": measured["markers"],
                "old_version": 1, "new_version": 2, "late_problem": None, "bucket_s": 0.25,
                "new_version_server": {"load_ms": 120.0, "warmup_ms": None if setting else 30.0,
                                       "metrics_error": None},
                "models": swap.verdict(measured, ["m", "n"], "m", 0.25), "setting": setting or swap.AS_SERVED}
    served = {**run(None, 20, 1.6), "compared": [{**run("warmup=false", 80, 2.1), "changes": {"warmup": False}}]}
    result = _result(swap=served, parts=("cold_start", "swap"))
    charts = lifecyclepage.chart_data(result)["swap"]["compared"]
    assert [c["name"] for c in charts] == [swap.AS_SERVED, "warmup=false"]
    assert charts[0]["points"][0][0] == pytest.approx(-1.0 + 0.125)  # seconds from the copy, at 1.0 s
    assert max(p[1] for p in charts[1]["points"]) == pytest.approx(80.0)
    rows = lifecyclepage._compare_rows(served)
    assert [r[:4] for r in rows] == [[swap.AS_SERVED, "0.60", "120", "30"], ["warmup=false", "1.10", "120", "none"]]
    assert "with warmup=false: answered 1.10 s after the copy, peak p99 80.0 ms, 0 failures" in result.headline
    text = lifecyclepage.terminal(result)
    assert "swap, compared settings" in text and "warmup=false" in text
    assert "chart-swap-compare" in lifecyclepage.html_page(result)
