"""make bench for real: a short sweep against the embedded server, reuse of a deployed server, wrong answers
counted as failures, Ctrl-C stopping what the run started."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deploy.waiting import Endpoints, rest_status
from loadtests.drive.payloads import PayloadSet
from loadtests.measure.payloadsets import load_or_build
from spec.loader import load_spec
from spec.results import BenchSummary, CapacityResult
from tests.conftest import (NOISE, REPO, generator_kept_up, interruptible, measured_while_the_generator_keeps_up,
                            run_cli, write_spec)
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.slow
# `measures` per test: the unmarked ones check mechanics (exit codes, messages, files, what is left running),
# which a busy machine cannot change, so they run in the first tier beside other tests


def _bench_spec(tmp_path, digits_export, **overrides):
    spec_path, version_dir = digits_export
    values = {"export.base_path": str(version_dir.parents[1]), "serving.grpc_port": free_port(),
              "serving.rest_port": free_port(), "benchmark.output_dir": str(tmp_path / "reports"),
              "benchmark.duration": "2s", "benchmark.warmup": "1s", "benchmark.users": [1, 2],
              "benchmark.images.count": 3,
              # these tests check the sweep's mechanics on 2 s windows, not the validity rules (tested with
              # stand-ins and unit tests): short windows are fine here and their noise is not a finding
              "benchmark.min_duration": "1s", "benchmark.stability_percent": 1000}
    values.update(overrides)
    return write_spec(tmp_path, "specs/digits_cnn.yaml", **values)


def _ran_cleanly(result, summary_dir) -> None:
    """Exit 0, or 4 only because of NOISE (the generator shares 2 cores with the server)."""
    if result.returncode == 4:
        summary = json.loads((summary_dir / "summary.json").read_text())
        reasons = [reason for r in summary["runs"] for reason in r["invalid_reasons"]]
        assert reasons and all(reason.startswith(NOISE) for reason in reasons), reasons
        return
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _traced(run_dir, profile: dict) -> None:
    """--profile: the server's trace of the window, beside the report, with the model's runs in it."""
    from server.profiler import has_events

    assert profile["file"] and profile["error"] is None, profile
    trace = run_dir / profile["file"]
    assert trace.parent.parent == run_dir / "profile" / "plugins" / "profile"  # TensorBoard's layout
    data = trace.read_bytes()
    assert has_events(data) and b"digits_cnn" in data, len(data)  # the model's own ops ran in it


def _server_side_agrees(r: dict) -> None:
    """The server's own account of a run (its Prometheus deltas) against the client's."""
    server = r["server"]
    assert server["available"], server
    assert server["source"].endswith("/monitoring/prometheus/metrics")
    # both count the requests answered between the window's two ends; each end may split at most `users` calls
    assert abs(server["requests"] - server["client_requests"]) <= 2 * r["users"] + 2, server
    assert server["errors"] == 0
    assert 0 < server["runtime_mean_ms"] <= server["request_mean_ms"] <= r["service_mean_ms"], (server, r)
    for q in (50, 99):  # a bucketed percentile is known to within its bucket: that bucket starts at or below
        lower, upper = server[f"request_p{q}_bucket_ms"]
        assert lower <= server[f"request_p{q}_ms"] <= upper and lower <= r[f"p{q}_ms"], (q, server, r)
    parts = r["breakdown"]
    assert parts["outside_server_ms"] + parts["server_overhead_ms"] + parts["model_ms"] == \
        pytest.approx(r["service_mean_ms"])
    assert parts["model_ms"] > 0 and parts["server_overhead_ms"] >= 0 and parts["queue_ms"] is None
    assert not server["batching"] and server["batch_size_mean"] is None
    assert r["server_core_ms_per_request"] > 0 and r["generator_core_ms_per_request"] > 0


def _port_free(port: int) -> bool:
    import socket
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.measures  # the server's own count must match the client's window: scrapes late on a busy core miss it
def test_short_sweep_writes_summary_and_report(tmp_path, digits_export):
    spec_path = _bench_spec(tmp_path, digits_export)
    spec = load_spec(spec_path)
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path), "--profile")
    latest = tmp_path / "reports" / "digits_cnn" / "latest"
    _ran_cleanly(result, latest)
    assert "REST/gRPC" in result.stdout and "correctness: top-1 equal everywhere" in result.stdout
    _traced(latest, json.loads((latest / "summary.json").read_text())["runs"][0]["profile"])  # the first run only
    assert not any("profile" in r for r in json.loads((latest / "summary.json").read_text())["runs"][1:])
    assert "tensorboard --logdir" in result.stdout
    assert latest.is_symlink()
    summary = json.loads((latest / "summary.json").read_text())
    typed = BenchSummary.from_dict(summary, "summary.json")  # the typed result reads the file back whole
    assert typed.to_dict() == summary and [r.users for r in typed.runs] == [r["users"] for r in summary["runs"]]
    runs = summary["runs"]
    assert [(r["users"], r["protocol"], r["wire"]) for r in runs] == [
        (u, p, w) for u in (1, 2) for p, w in (("rest", "image_b64"), ("grpc", "image_bytes"),
                                               ("rest", "tensor_row"), ("grpc", "tensor_content"))]
    for r in runs:
        assert r["requests"] > 20 and r["failures"] == 0, r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["rps"] > 0 and r["bytes_per_request"] > 0 and r["generator_cpu_percent"] > 0
        assert r["server_cpu_percent"] is not None and r["server_cpu_percent"] > 0
        assert (latest / r["locust_csv"]).exists() and (latest / r["locust_html"]).exists()
        assert (latest / "samples" / r["samples_file"]).exists()
        _server_side_agrees(r)
    tensor_rest = next(r for r in runs if r["wire"] == "tensor_row")
    image_rest = next(r for r in runs if r["wire"] == "image_b64")
    assert tensor_rest["bytes_per_request"] > image_rest["bytes_per_request"]  # floats in JSON outweigh a JPEG
    assert {c["wire"] for c in summary["correctness"]} == {"image_b64", "image_bytes", "tensor_row", "tensor_content"}
    assert all(c["max_abs_diff"] <= 1e-4 for c in summary["correctness"])
    provenance = summary["provenance"]
    assert provenance["spec_sha256"] == spec.sha256 and provenance["backend"] == "embedded"
    assert provenance["server_started_by_bench"] and provenance["cpu_count"] == os.cpu_count()
    assert len(provenance["model_signature_sha256"]) == 64 and provenance["git_commit"]
    page = (latest / "report.html").read_text()
    for chart in ("chart-latency", "chart-throughput", "chart-pairs", "chart-timeline", "chart-cdf", "chart-breakdown"):
        assert f"id='{chart}'" in page, chart
    for png in ("latency.png", "throughput.png", "latency_vs_size.png", "breakdown.png"):
        assert f"href='{png}'" in page and (latest / png).stat().st_size > 1000, png
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])  # JSON reads <\/ as </
    assert len(data["runs"]) == len(runs) and "Where the time goes" in page
    assert "where the time goes" in result.stdout and "= outside " in result.stdout
    assert _port_free(spec.serving.rest_port) and _port_free(spec.serving.grpc_port)  # it stopped what it started


@pytest.mark.measures
def test_floor_runs_the_same_sweep_on_an_almost_free_head_beside_the_model(tmp_path, digits_export):
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.users": [1], "benchmark.payloads": ["image_b64"],
                                                        "benchmark.duration": "3s"})
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path), "--floor", "1")
    latest = tmp_path / "reports" / "digits_cnn" / "latest"
    _ran_cleanly(result, latest)
    summary = json.loads((latest / "summary.json").read_text())
    floor = summary["floor"]
    assert floor["model"] == "digits_cnn_floor" and floor["classes"] == 10
    assert [(r["protocol"], r["wire"], r["users"]) for r in floor["runs"]] == \
        [(r["protocol"], r["wire"], r["users"]) for r in summary["runs"]]
    assert all(c["top1_equal"] for c in floor["correctness"])  # the floor's answers are checked like the model's
    for model_run, floor_run in zip(summary["runs"], floor["runs"]):
        assert floor_run["failures"] == 0 and floor_run["server"]["available"]
        # the same decode and preprocessing, without the CNN: the server's model time is lower
        assert floor_run["server"]["runtime_mean_ms"] < model_run["server"]["runtime_mean_ms"], (floor_run, model_run)
    assert len(floor["beside"]) == 2 and all(0 < row["floor_share"] for row in floor["beside"])
    assert (latest / "floor" / "models" / "digits_cnn_floor").is_dir()
    assert "protocol floor (digits_cnn_floor" in result.stdout
    assert "Protocol floor" in (latest / "report.html").read_text()


def test_bench_reuses_a_deployed_model_and_leaves_it_running(tmp_path, digits_export):  # mechanics: the first tier
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.users": [2], "benchmark.min_requests": 20})
    spec = load_spec(spec_path)
    up = run_cli("-m", "deploy", "up", "--spec", str(spec_path))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert run_cli("-m", "deploy", "status", "--spec", str(spec_path)).returncode == 0
        result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path), "--protocols", "grpc",
                         "--payloads", "image_b64")
        _ran_cleanly(result, tmp_path / "reports" / "digits_cnn" / "latest")
        assert "already served" in result.stdout
        endpoints = Endpoints("127.0.0.1", spec.serving.rest_port, spec.serving.grpc_port, spec.name)
        assert rest_status(endpoints) == "AVAILABLE"
        summary = json.loads((tmp_path / "reports" / "digits_cnn" / "latest" / "summary.json").read_text())
        assert [(r["protocol"], r["users"]) for r in summary["runs"]] == [("grpc", 2)]
        assert summary["provenance"]["server_started_by_bench"] is False
    finally:
        down = run_cli("-m", "deploy", "down", "--spec", str(spec_path))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert run_cli("-m", "deploy", "status", "--spec", str(spec_path)).returncode == 1


def test_distributed_bench_merges_local_and_remote_workers(tmp_path, digits_export):
    """WORKERS=1 plus one `python -m loadtests worker` (as on another machine): every run gets both workers'
    requests, the payloads reach the remote one from the master, and nothing outlives the bench. Mechanics only (no
    figure judged), so it runs in the first tier."""
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.users": [2], "benchmark.payloads": ["image_b64"],
                                                        "benchmark.min_requests": 20})
    master_port = free_port()
    remote = subprocess.Popen([sys.executable, "-m", "loadtests", "worker", "--master-host", "127.0.0.1",
                               "--master-port", str(master_port), "--runs", "2"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path), "--workers", "1",
                         "--remote-workers", "1", "--master-port", str(master_port))
        _ran_cleanly(result, tmp_path / "reports" / "digits_cnn" / "latest")
        out, _ = remote.communicate(timeout=60)
    finally:
        remote.kill()
    assert remote.returncode == 0 and "run 2 finished" in out, out[-2000:]
    summary = json.loads((tmp_path / "reports" / "digits_cnn" / "latest" / "summary.json").read_text())
    assert summary["settings"]["workers"] == 1 and summary["settings"]["remote_workers"] == 1
    assert [r["protocol"] for r in summary["runs"]] == ["rest", "grpc"]
    latest = tmp_path / "reports" / "digits_cnn" / "latest"
    for r in summary["runs"]:
        assert r["generator_processes"] == 2 and r["failures"] == 0 and r["requests"] > 20, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["generator_cpu_percent"] > 0
        with np.load(latest / "samples" / r["samples_file"]) as data:
            meta = json.loads(data["meta"].tobytes())
        assert len(meta["generator_cpu_by_process"]) == 2 and all(c > 0 for c in meta["generator_cpu_by_process"])
        assert len(meta["requests_by_process"]) == 2 and all(n > 0 for n in meta["requests_by_process"]), meta
    leftover = subprocess.run(["pgrep", "-f", f"--master-port {master_port}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout


def test_wrong_answers_fail_with_their_reason(tmp_path, digits_export):
    from loadtests.measure.correctness import MismatchError, check
    from loadtests.measure.run import Step, Target, measure, run_step

    spec_path, version_dir = digits_export
    spec = load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "benchmark.output_dir": str(tmp_path / "reports"),
        "benchmark.images.count": 4}))
    right, _ = load_or_build(spec, version_dir, log=lambda line: None)
    # claim each image's answer is another image's with a different top-1: the server is now "wrong"
    order = [next(j for j in range(len(right)) if right.expected_top1[j] != right.expected_top1[i])
             for i in range(len(right))]
    wrong = PayloadSet(right.model, right.names, right.sizes, right.jpegs, right.tensors, right.expected[order])
    wrong.save(tmp_path / "wrong.npz")
    server = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}")
    try:
        with pytest.raises(MismatchError, match="top-1"):
            check(wrong, server.rest, server.grpc_target, "digits_cnn", [("grpc", "image_b64")])
        target = Target("digits_cnn", server.rest, server.grpc_target, tmp_path / "wrong.npz", 0.5, 1.5, 10)
        for protocol in ("rest", "grpc"):
            step = Step(protocol, "image_b64", 1)
            entry = measure(step, run_step(step, target, tmp_path / "out"), [1] * 4, right.sizes)
            assert entry["requests"] > 0 and entry["failures"] == entry["requests"], entry
            assert any("top-1 class" in reason for reason in entry["failure_reasons"]), entry["failure_reasons"]
    finally:
        server.stop()


def test_ctrl_c_stops_the_server_the_bench_started(tmp_path, digits_export):
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.duration": "60s", "benchmark.users": [1]})
    spec = load_spec(spec_path)
    with interruptible("-m", "loadtests", "bench", "--spec", str(spec_path),
                       cleanup=lambda: run_cli("-m", "deploy", "down", "--spec", str(spec_path))) as proc:
        seen = ""
        deadline = time.monotonic() + 120
        while "[1/" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "[1/" in seen, seen + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped" in err and "Traceback" not in err
    assert _port_free(spec.serving.rest_port) and _port_free(spec.serving.grpc_port)


def test_a_server_that_dies_mid_sweep_ends_it_with_a_report_and_a_clear_error(tmp_path, digits_export):
    from deploy.embedded import EmbeddedDeployment

    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.duration": "3s", "benchmark.users": [1, 2],
                                                         "benchmark.payloads": ["image_b64"]})
    spec = load_spec(spec_path)
    proc = subprocess.Popen([sys.executable, "-m", "loadtests", "bench", "--spec", str(spec_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "[1/" not in seen:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "[1/" in seen, seen + proc.stderr.read()
    time.sleep(1.5)  # inside the first run's window
    os.kill(EmbeddedDeployment(spec).pid(), signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert "the server stopped during run 1" in out and "the remaining 3 runs are skipped" in out
    assert "error: the model server stopped during the sweep" in err and "1 of 4 runs were measured" in err
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "reports" / "digits_cnn" / "latest" / "summary.json").read_text())
    assert summary["failed"] and summary["server_died"] and len(summary["runs"]) == 1
    assert summary["runs"][0]["failures"] > 0  # the requests after the crash are counted, with their reason
    assert "stopped during the sweep" in (tmp_path / "reports" / "digits_cnn" / "latest" / "report.html").read_text()
    assert _port_free(spec.serving.rest_port) and _port_free(spec.serving.grpc_port)


def test_bad_spec_and_bad_override_get_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {source: {kind: keras_application, application: MobileNetV2}}\nbenchmark: {users: [0]}\n")
    result = run_cli("-m", "loadtests", "bench", "--spec", str(bad))
    assert result.returncode == 2 and "bad.yaml:3" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("-m", "loadtests", "bench", "--spec", "specs/digits_cnn.yaml", "--users", "two")
    assert result.returncode == 2 and "users" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.measures
def test_open_loop_bench_splits_the_schedule_over_workers(tmp_path, digits_export):
    """MODE=open RATES=... WORKERS=2: each run keeps its rate, split over two worker processes, with the open-loop
    fields in summary.json and the report."""
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.payloads": ["image_b64"],
                                                         "benchmark.duration": "4s"})
    latest = tmp_path / "reports" / "digits_cnn" / "latest"

    def kept_up(result) -> bool:  # a sweep the harness flags as generator-late is measured again, not excused
        if result.returncode != 4:
            return True
        summary = json.loads((latest / "summary.json").read_text())
        return generator_kept_up(reason for r in summary["runs"] for reason in r["invalid_reasons"])

    result = measured_while_the_generator_keeps_up(
        lambda: run_cli("-m", "loadtests", "bench", "--spec", str(spec_path), "--mode", "open", "--rates", "40,80",
                        "--arrival", "constant", "--workers", "2"), kept_up)
    _ran_cleanly(result, latest)
    summary = json.loads((latest / "summary.json").read_text())
    assert summary["mode"] == "open" and summary["settings"]["arrival"] == "constant"
    assert [(r["protocol"], r["offered_rps"]) for r in summary["runs"]] == [
        ("rest", 40), ("grpc", 40), ("rest", 80), ("grpc", 80)]
    for r in summary["runs"]:
        assert r["mode"] == "open" and r["users"] is None and r["failures"] == 0, r
        assert r["rps"] == pytest.approx(r["offered_rps"], rel=0.05), r  # the schedule, not the server, set it
        assert r["late_ratio"] < 0.01 and r["generator_processes"] == 2
        assert 0 < r["service_p50_ms"] <= r["p50_ms"] + 0.5 and r["service_p99_ms"] <= r["p99_ms"] + 0.5
        assert r["littles_law"]["holds"] and set(r["percentiles_supported"]) == {"p50", "p90", "p95", "p99"}
        with np.load(latest / "samples" / r["samples_file"]) as data:
            meta = json.loads(data["meta"].tobytes())
            assert meta["mode"] == "open" and meta["arrival"] == "constant"
            assert np.isfinite(data["due"]).all()
        shares = meta["requests_by_process"]  # each worker sent half the schedule
        assert len(shares) == 2 and min(shares) >= 0.4 * sum(shares), shares
    assert "rate" in result.stdout and "Open loop" in (latest / "report.html").read_text()


def test_an_invalid_run_is_reported_and_exits_4(tmp_path, digits_export):  # 10 million requests: invalid on any machine
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.users": [1], "benchmark.payloads": ["image_b64"],
                                                         "benchmark.protocols": ["grpc"],
                                                         "benchmark.min_requests": 10_000_000})
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path))
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    latest = tmp_path / "reports" / "digits_cnn" / "latest"
    summary = json.loads((latest / "summary.json").read_text())
    (run,) = summary["runs"]
    assert summary["valid"] is False and summary["invalid_runs"] == 1 and run["valid"] is False
    assert any("fewer than benchmark.min_requests (10000000)" in reason for reason in run["invalid_reasons"])
    assert "INVALID" in result.stdout and "INVALID" in (latest / "report.html").read_text()


@pytest.mark.measures
def test_capacity_command_writes_capacity_json_and_its_plot(tmp_path, digits_export):
    spec_path = _bench_spec(tmp_path, digits_export, **{"benchmark.duration": "3s", "benchmark.warmup": "1s",
                                                         "benchmark.payloads": ["image_b64"],
                                                         "benchmark.protocols": ["rest"]})
    missing = run_cli("-m", "loadtests", "capacity", "--spec", str(spec_path))
    assert missing.returncode == 2 and "capacity needs a latency objective" in missing.stderr
    assert "Traceback" not in missing.stderr
    result = run_cli("-m", "loadtests", "capacity", "--spec", str(spec_path), "--slo", "p90:40ms",
                     "--precision", "50%", "--profile")
    assert result.returncode in (0, 4), result.stdout[-3000:] + result.stderr[-3000:]
    latest = tmp_path / "reports" / "digits_cnn" / "latest"
    capacity = json.loads((latest / "capacity.json").read_text())
    assert capacity["slo"] == {"percentile": 90.0, "latency_ms": 40.0}
    typed = CapacityResult.from_dict(capacity, "capacity.json")
    assert typed.to_dict() == capacity and typed.results[0].capacity_rps == capacity["results"][0]["capacity_rps"]
    summary = json.loads((latest / "summary.json").read_text())  # a capacity search's summary: its cells too
    assert BenchSummary.from_dict(summary, "summary.json").capacity is not None
    (cell,) = capacity["results"]
    assert (cell["protocol"], cell["payload"]) == ("rest", "image_b64")
    passing = [p["offered_rps"] for p in cell["probes"] if p["meets_slo"]]
    assert passing and cell["capacity_rps"] == max(passing)
    assert all({"offered_rps", "achieved_rps", "p90_ms", "valid", "meets_slo"} <= set(p) for p in cell["probes"])
    failing = [p["offered_rps"] for p in cell["probes"] if not p["meets_slo"]]
    if result.returncode == 4:
        assert cell["limited_by"] == "generator"
    else:
        assert cell["limited_by"] is None and min(failing) <= 1.5 * cell["capacity_rps"]  # bracketed to 50%
    assert cell["profile"]["offered_rps"] == cell["capacity_rps"]  # one more window, at the capacity: not a probe
    _traced(latest, cell["profile"])
    summary = json.loads((latest / "summary.json").read_text())
    assert summary["mode"] == "open" and len(summary["runs"]) == len(cell["probes"])
    page = (latest / "report.html").read_text()
    assert "id='chart-capacity'" in page and "Capacity at p90" in page
    assert "href='capacity.png'" in page and (latest / "capacity.png").stat().st_size > 1000
    assert "capacity at p90 <= 40 ms" in result.stdout
