"""make lifecycle's pieces on known inputs: the warmup file's records, the copy without them, when the first requests
stop being slow, what the server's metrics and log say about the warmup, the verdict in words, the thresholds, the
typed result, its page and the command's one-line mistakes."""
from __future__ import annotations

import json
import struct
import zlib

import pytest

from loadtests.commands import lifecycle as command
from loadtests.measure import coldstart
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
    return ColdStartVariant(name=name, base_path="/m", warmup_file=name == command.AS_EXPORTED, starts=starts,
                            median={"available_s": 4.0, "first_answer_s": 4.1, "first_request_ms": 3.0,
                                    "steady_p50_ms": 2.0, "slow_requests": 0, "memory_peak_mb": 600.0, **median})


def test_the_warmup_verdict_says_plainly_whether_it_was_used():
    used = command.warmup_verdict(8, [_variant(command.AS_EXPORTED, [1, 1], 8),
                                      _variant(command.WITHOUT_WARMUP, [0, 0])])
    assert used["used"] is True and "8 warmup records" in used["text"] and "8 records read" in used["text"]
    ignored = command.warmup_verdict(8, [_variant(command.AS_EXPORTED, [0, 0]), _variant(command.WITHOUT_WARMUP, [0])])
    assert ignored["used"] is False and ignored["text"].startswith("NOT USED") and "ignored the file" in ignored["text"]
    partly = command.warmup_verdict(8, [_variant(command.AS_EXPORTED, [1, 0])])
    assert partly["used"] is False, "a start that did not warm up is a warmup not used"
    none = command.warmup_verdict(None, [_variant(command.AS_EXPORTED, [0])])
    assert none["used"] is None and "has no warmup records" in none["text"]
    stray = command.warmup_verdict(8, [_variant(command.AS_EXPORTED, [1], 8), _variant(command.WITHOUT_WARMUP, [1])])
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
    variants = (_variant(command.AS_EXPORTED, [1], 8), _variant(command.WITHOUT_WARMUP, [0], first_request_ms=90.0))
    variants = tuple(ColdStartVariant(**{**{f: getattr(v, f) for f in ("name", "base_path", "warmup_file", "median")},
                                         "starts": tuple({**s, "ports_open_s": 1.0, "available_s": 2.0,
                                                          "first_answer_s": 2.5, "first_requests_ms": [9.0, 2.0, 2.0]}
                                                         for s in v.starts)}) for v in variants)
    return LifecycleResult(model="m", created="2026-12-06T00:00:00+00:00", report_dir="/r", backend="embedded",
                           parts=("cold_start",), settings={"repeats": 1, "first_requests": 3, "payload": "image_b64"},
                           provenance={"server": "ours"}, warmup_records=8,
                           warmup=command.warmup_verdict(8, list(variants)), cold_start=variants,
                           headline=command.headline({"warmup": command.warmup_verdict(8, list(variants))},
                                                     list(variants), "embedded", 1), **more)


def test_the_result_reads_back_whole_and_its_page_draws_every_start(tmp_path):
    result = _result(thresholds=({"threshold": "available_s < 1", "passed": False, "value": 4.0},),
                     thresholds_passed=False)
    data = json.loads(result.to_json())
    assert data["schema_version"] and LifecycleResult.from_dict(data, "lifecycle.json").to_dict() == data
    assert "first request 90.0 ms" in result.headline and result.headline.endswith("Warmup: used")
    charts = lifecyclepage.chart_data(result)["coldstart"]
    assert [g["label"] for g in charts["groups"]] == [command.AS_EXPORTED, command.WITHOUT_WARMUP]
    phases = charts["groups"][0]["bars"][0]["parts"]
    assert [round(p["value"], 3) for p in phases] == [1.0, 1.0, 0.5], "each phase from the end of the one before"
    assert [len(s["points"]) for s in charts["first"]] == [3, 3] and charts["first"][1]["dash"]
    lifecyclepage.write(result, tmp_path)
    page = (tmp_path / "lifecycle.html").read_text()
    assert "FAILED: available_s &lt; 1" in page and "chart-first" in page and "chart-coldstart" in page
    assert "FAILED: available_s < 1" in lifecyclepage.terminal(result)


def test_the_commands_mistakes_are_one_line(capsys):
    spec = str(REPO / "specs" / "digits_cnn.yaml")
    for argv, expected in ((["--spec", spec, "--parts", "swap"], "--parts 'swap': swap is not a part"),
                           (["--spec", spec, "--repeats", "0"], "--repeats='0'"),
                           (["--spec", spec, "--first-requests", "many"], "--first-requests='many'"),
                           (["--spec", str(REPO / "specs" / "nope.yaml")], "nope.yaml")):
        assert command.main_lifecycle(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
