"""make lifecycle for real on the embedded server: cold starts of the digits export with its warmup records and of a
copy without them (the server's own metrics prove which warmed up), a warmup file the server was told to ignore,
the thresholds' exit code, the page drawn in headless Chromium and the history row; a version swap under open-loop
load with a co-served neighbour; density up to three copies, and a memory limit that stops it."""
from __future__ import annotations

import json
import shutil

import pytest

from loadtests.analyze import resultsdb
from loadtests.measure import coldstart
from server.dataplane import WARMUP_FILE
from spec.results import LifecycleResult
from tests.browser import render
from tests.conftest import run_cli, write_spec
from tests.serverproc import free_port

pytestmark = [pytest.mark.slow]


def _spec(tmp_path, digits_export, **more):
    _, version_dir = digits_export
    return write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "serving.rest_port": free_port(),
        "serving.grpc_port": free_port(), "benchmark.output_dir": str(tmp_path / "reports"),
        "benchmark.images.count": 2, "lifecycle.first_requests": 20, "lifecycle.steady_requests": 40,
        "lifecycle.start_timeout": "90s", "lifecycle.parts": ["cold_start"], **more})


def _result(tmp_path) -> tuple[dict, LifecycleResult]:
    latest = tmp_path / "reports" / "digits_cnn" / "lifecycle" / "latest"
    data = json.loads((latest / "lifecycle.json").read_text())
    return data, LifecycleResult.from_dict(data, "lifecycle.json")


def test_cold_starts_with_and_without_the_warmup_records(tmp_path, digits_export):
    _, version_dir = digits_export
    records = coldstart.warmup_records(version_dir)
    assert records, "the digits export writes warmup records"
    spec_path = _spec(tmp_path, digits_export, **{"lifecycle.thresholds": {"available_s": "< 600",
                                                                            "first_answer_s": "< 0.001"}})
    done = run_cli("-m", "loadtests", "lifecycle", "--spec", str(spec_path), "--repeats", "1")
    assert done.returncode == 6, done.stdout[-3000:] + done.stderr[-3000:]  # first_answer_s < 1 ms cannot hold
    data, result = _result(tmp_path)
    assert result.to_dict() == data and result.backend == "embedded" and result.warmup_records == records
    exported, bare = result.cold_start
    assert (exported.name, bare.name) == ("as exported", "without warmup records")
    for variant in (exported, bare):
        [start] = variant.starts
        assert 0 < start["ports_open_s"] <= start["available_s"] <= start["first_answer_s"] < 90, start
        assert len(start["first_requests_ms"]) == 20 and start["first_request_ms"] == pytest.approx(start["first_requests_ms"][0], abs=1e-3)
        assert 0 <= start["slow_requests"] <= 20 and start["steady_p50_ms"] > 0
        assert start["memory_available_mb"] > 50 and start["memory_peak_mb"] >= 50, start  # TensorFlow alone
        assert start["load_ms"] > 0, "the server's load_latency metric"
    # the server's own account: one warmup run replaying every record with them, none without
    assert exported.starts[0]["warmup_runs"] == 1 and exported.starts[0]["warmup_records_read"] == records
    assert exported.starts[0]["warmup_ms"] > 0
    assert bare.starts[0]["warmup_runs"] == 0 and bare.starts[0]["warmup_records_read"] is None
    assert result.warmup["used"] is True and f"{records} warmup record" in result.warmup["text"]
    assert [t["passed"] for t in result.thresholds] == [True, False] and result.thresholds_passed is False
    assert "threshold FAILED: first_answer_s < 0.001" in done.stdout and result.headline in done.stdout
    assert not (tmp_path / "reports" / "digits_cnn" / "lifecycle" / "latest" / ".without-warmup").exists()
    page = render(tmp_path / "reports" / "digits_cnn" / "lifecycle" / "latest" / "lifecycle.html")
    assert page["errors"] == [] and page["requests"] == [], page
    assert page["charts"]["chart-coldstart"]["rect"] == 6, page  # 2 starts x 3 phases
    assert page["charts"]["chart-first"]["path"] >= 2 and page["headline"] == result.headline
    [row] = resultsdb.load(f"sqlite:///{tmp_path / 'reports' / 'results.sqlite'}", "digits_cnn")
    assert row["kind"] == "lifecycle" and row["note"] == result.headline and row["thresholds_passed"] is False
    history = run_cli("-m", "loadtests", "history", "--spec", str(spec_path))
    assert history.returncode == 0 and "lifecycle" in history.stdout and "AVAILABLE after" in history.stdout


def test_a_warmup_file_the_server_ignores_is_reported_not_used(tmp_path, digits_export):
    # export.warmup: false starts the server with --enable_model_warmup=false, as TF Serving's flag: the export's
    # file is then never read, and the report must say so rather than show a cold start as if it were warm
    spec_path = _spec(tmp_path, digits_export, **{"export.warmup": False})
    done = run_cli("-m", "loadtests", "lifecycle", "--spec", str(spec_path), "--repeats", "1",
                   "--first-requests", "10")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, result = _result(tmp_path)
    assert result.cold_start[0].starts[0]["warmup_runs"] == 0
    assert result.warmup["used"] is False and result.warmup["text"].startswith("NOT USED")
    assert "warmup: NOT USED" in done.stdout and result.headline.endswith("Warmup: NOT USED.")


def test_a_model_already_served_is_refused_before_anything_starts(tmp_path, digits_export):
    from tests.serverproc import ServerProcess

    _, version_dir = digits_export
    server = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}", log_dir=tmp_path)
    try:
        spec_path = _spec(tmp_path, digits_export, **{"serving.rest_port": server.rest_port,
                                                      "serving.grpc_port": server.grpc_port})
        done = run_cli("-m", "loadtests", "lifecycle", "--spec", str(spec_path))
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("error: lifecycle: 'digits_cnn' is already served") and "make down" in line
        assert not (tmp_path / "reports").exists()
    finally:
        server.stop()


def _neighbour(tmp_path, version_dir):
    """A second image model served beside digits_cnn: the same export under another name."""
    shutil.copytree(version_dir.parent, tmp_path / "others" / "digits_b")
    return write_spec(tmp_path / "others", "specs/digits_cnn.yaml", **{
        "name": "digits_b", "export.base_path": str(tmp_path / "others")})


def _slow_to_load(tmp_path, version_dir):
    """A copy of the digits export whose warmup file holds its records over and over, up to 960 (TFRecords are
    self-framed, so the file repeated is a valid file): every version of it takes about half a second to warm up."""
    copy = tmp_path / "slow" / "digits_cnn" / version_dir.name
    shutil.copytree(version_dir, copy)
    times = 960 // coldstart.warmup_records(version_dir)  # under TF Serving's limit of 1000 records
    (copy / WARMUP_FILE).write_bytes((version_dir / WARMUP_FILE).read_bytes() * times)
    assert coldstart.warmup_records(copy) > 900
    return copy


def test_a_version_swap_under_load_watches_every_model_and_a_memory_limit_stops_density(tmp_path, digits_export):
    _, version_dir = digits_export
    slow = _slow_to_load(tmp_path, version_dir)
    spec_path = _spec(tmp_path, digits_export, **{"serving.also_serve": [str(_neighbour(tmp_path, version_dir))],
                                                  "export.base_path": str(slow.parents[1]),
                                                  "lifecycle.swap.baseline": "2s", "lifecycle.swap.after": "1s"})
    done = run_cli("-m", "loadtests", "lifecycle", "--spec", str(spec_path), "--parts", "swap,density",
                   "--rate", "25", "--max-models", "3", "--memory-limit", "100MiB",
                   "--swap-compare", "warmup=false,num_load_threads=2,file_system_poll_wait_seconds=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data, result = _result(tmp_path)
    assert result.to_dict() == data and result.cold_start == () and result.parts == ("swap", "density")
    swap = result.swap
    markers = swap["markers"]
    # the new version was copied aside, renamed in, found by the file-system poll and loaded; the old one then ended
    assert 0 < markers["copy"] <= markers["renamed"] < markers["available"] <= markers["old_end"], markers
    assert markers["available"] < markers["removed"] < markers["end"]
    digits, neighbour = swap["models"]["digits_cnn"], swap["models"]["digits_b"]
    assert digits["failures"] == 0 and neighbour["failures"] == 0, (digits["failure_reasons"],
                                                                    neighbour["failure_reasons"])
    assert digits["versions"] == [1, 2] and digits["old_after_switch"] == 0, digits
    assert neighbour["versions"] == [1] and len(neighbour["buckets"]) == len(digits["buckets"]) > 10
    assert digits["requests"] > 80 and neighbour["requests"] > 80  # 25 req/s each for 4 s and more
    # the new version was slow to load (its warmup replays 960 records): the time from the copy to its first
    # answer holds what the server says loading and warming it took, a measurable gap
    server = swap["new_version_server"]
    assert server["load_ms"] > 0 and server["warmup_ms"] > 300, server
    assert digits["copy_to_new_answer_s"] * 1000 >= server["load_ms"] + server["warmup_ms"]
    assert markers["available"] - markers["renamed"] >= server["warmup_ms"] / 1000 * 0.9
    assert markers["copy"] < digits["first_new_done_s"] and digits["first_new_due_s"] < digits["first_new_done_s"]
    # the same swap on a fresh server with other flags, the new version without its warmup records: the server
    # says it loaded it and ran no warmup, and nothing failed
    [other] = swap["compared"]
    assert other["setting"] == "num_load_threads=2, file_system_poll_wait_seconds=2, warmup=false", other["setting"]
    assert other["changes"] == {"num_load_threads": 2, "file_system_poll_wait_seconds": 2, "warmup": False}
    assert other["new_version_server"]["load_ms"] > 0 and other["new_version_server"]["warmup_ms"] is None
    again = other["models"]["digits_cnn"]
    assert again["versions"] == [1, 2] and again["failures"] == 0 == other["models"]["digits_b"]["failures"], again
    assert "with num_load_threads=2, file_system_poll_wait_seconds=2, warmup=false: answered" in result.headline
    # density: one server of one copy already holds more than 100 MiB, so none fits and no second copy is tried
    density = result.density
    assert [s["models"] for s in density["steps"]] == [1] and density["fits"] == 0
    assert density["limited_by"].startswith("memory: 1 copies held") and "over the memory limit" in done.stdout
    page = render(tmp_path / "reports" / "digits_cnn" / "lifecycle" / "latest" / "lifecycle.html")
    assert page["errors"] == [] and page["charts"]["chart-swap"]["path"] >= 4, page  # p50 and p99 of two models
    assert page["charts"]["chart-swap-share"]["circle"] > 10 and "chart-coldstart" not in page["charts"]
    assert page["charts"]["chart-swap-compare"]["path"] >= 2  # a line for each setting
    assert "swap: version 2 answered" in result.headline and "density: 0 of 1 copy tried fit" in result.headline


def test_density_memory_grows_with_the_copies_served(tmp_path, digits_export):
    spec_path = _spec(tmp_path, digits_export, **{"lifecycle.density.duration": "2s",
                                                  "benchmark.slo": "p99:5s"})
    done = run_cli("-m", "loadtests", "lifecycle", "--spec", str(spec_path), "--parts", "density",
                   "--max-models", "3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, result = _result(tmp_path)
    steps = result.density["steps"]
    assert [s["models"] for s in steps] == [1, 2, 3] and result.density["fits"] == 3
    assert all(s["failures"] == 0 and s["slo_met"] is True and s["requests"] > 20 for s in steps), steps
    # every copy is a model of its own in the server: its graph and variables are held once more
    assert steps[2]["memory_available_mb"] > steps[0]["memory_available_mb"], steps
    assert result.density["per_copy_available_mb"] > 0 and result.density["saved_model_mb"] > 0
    # each copy was warmed up by the harness (the server started without its own warmup): the export's records
    # to every copy, none failed, and the memory read after them
    records = coldstart.warmup_records(digits_export[1])
    assert [s["warmup_requests"] for s in steps] == [records, 2 * records, 3 * records] and records > 0
    assert all(s["warmup_failures"] == [] and s["memory_warm_mb"] > 50 for s in steps), steps
    assert result.density["per_copy_warm_mb"] is not None and "once warmed up" in result.headline
    print("density:", [(s["models"], round(s["memory_available_mb"]), round(s["memory_warm_mb"]),
                        round(s["memory_peak_mb"])) for s in steps])
