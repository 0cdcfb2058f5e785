"""make tune against the embedded server, on models whose answer is known by construction:

* weight_bound (a 200 MB weight matrix read per batch): batching pays, and tune must find it (past min_gain, in
  capacity and in server CPU per request);
* compute_bound (arithmetic per image): batching does not raise the capacity, and tune must not recommend
  it, saying why from the CPU per request it measured;
* digits_cnn: a search in which one configuration fails to deploy records it as failed and goes on, and once
  interrupted it resumes where it stopped, with nothing left running.

The searches are restricted to a few configurations and short windows (a CI budget); what they check is the
decision, from capacities measured in the same run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from spec.loader import load_spec
from spec.results import TuneResult
from tests.browser import render
from tests.conftest import cached_export, interruptible, run_cli, write_spec
from tests.serverproc import free_port
from tests.tunefail import REFUSAL

pytestmark = pytest.mark.slow
# `measures` per test: the unmarked ones check mechanics (exit codes, messages, files, what is left running),
# which a busy machine cannot change, so they run in the first tier beside other tests

SHORT = {"benchmark.duration": "3s", "benchmark.warmup": "1s", "benchmark.min_duration": "2s",
         "benchmark.precision": "20%", "benchmark.images.count": 4, "benchmark.late_tolerance": "20ms",
         "benchmark.drain": "5s"}
FIXED = {"tune.intra_op_parallelism": [0], "tune.inter_op_parallelism": [0], "tune.grpc_max_threads": [0],
         "tune.rest_api_num_threads": [0], "tune.max_enqueued_batches": [64]}


def _spec(tmp_path, base: str, **overrides):
    """`base` as the tune tests run it: the committed model's export shared by content (cached_export: these tests
    check the search, not the export), free ports, short windows and a space given by `overrides`."""
    values = {"export.base_path": str(cached_export(base).parents[1]), "serving.grpc_port": free_port(),
              "serving.rest_port": free_port(), "benchmark.output_dir": str(tmp_path / "reports"),
              "benchmark.protocols": ["grpc"], "benchmark.payloads": ["image_b64"], **SHORT, **FIXED}
    values.update(overrides)
    return write_spec(tmp_path, base, **values)


def _tune(spec_path, *extra, timeout=1500):
    return run_cli("-m", "loadtests", "tune", "--spec", str(spec_path), *extra, timeout=timeout)


def _result(spec_path) -> dict:
    spec = load_spec(spec_path, tuned=False)
    return json.loads((spec.resolve(spec.benchmark.output_dir) / spec.name / "tune" / "latest" /
                       "tune.json").read_text())


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _nothing_running(spec_path) -> None:
    spec = load_spec(spec_path, tuned=False)
    assert _port_free(spec.serving.rest_port) and _port_free(spec.serving.grpc_port)
    found = subprocess.run(["pgrep", "-f", f"rest_api_port={spec.serving.rest_port}"], capture_output=True,
                           text=True).stdout.strip()
    assert not found, f"a server is still running: {found}"


@pytest.mark.measures
def test_tune_turns_batching_on_where_it_pays(tmp_path):
    # p90, not the spec's p99: a 3 s window holds 200-500 requests, so its p99 is the 2nd-5th slowest request and
    # one scheduler stall on a busy CI machine decides a probe (a CI run once bisected a batched trial down to
    # 1.2x this way). The decision checked is the same at any percentile (2.0x here at p90).
    spec_path = _spec(tmp_path, "specs/weight_bound.yaml", **{
        "benchmark.slo": "p90:200ms",
        "tune.batching": [False, True], "tune.max_batch_size": [16], "tune.batch_timeout_micros": [2000],
        "tune.num_batch_threads": [2], "tune.budget": "20m"})  # two trials: the decision is batching or not
    done = _tune(spec_path)
    assert done.returncode in (0, 4), done.stdout[-4000:] + done.stderr[-3000:]
    result = _result(spec_path)
    assert result["complete"] and len(result["trials"]) == 2, [t["label"] for t in result["trials"]]
    typed = TuneResult.from_dict(result, "tune.json")  # the typed result reads the file back whole
    assert typed.to_dict() == result and [t.index for t in typed.trials] == [1, 2]
    baseline, best = result["baseline"], result["best"]
    assert not baseline["config"]["batching"] and baseline["capacity_rps"] > 0
    assert best["config"]["batching"] and best["config"]["max_batch_size"] >= 4, result["headline"]
    # Both bars are the product's own: a gain must clear min_gain (here the 20% precision of the capacity
    # searches) to be a gain. A fixed 1.5x was flaky: on 2 cores the load generator shares the CPUs with a server
    # reading 200 MB per batch, and a CI run had every trial flagged generator-limited, so its capacities were
    # lower bounds (1.40x, with 1.39x less server CPU per request in batches of 4; 2.7x less in batches of 16 on an
    # idle machine). The compute-bound test below is the contrast: there the per-request cost does not fall.
    bar = 1 + result["min_gain"]
    assert best["capacity_rps"] > bar * baseline["capacity_rps"], (best["capacity_rps"], baseline["capacity_rps"])
    verdict = result["batching"]
    assert verdict["recommended"] and "batching pays" in verdict["why"]
    assert verdict["cost_measure"] == "server_core_ms_per_request" and verdict["runtime_gain"] > bar, verdict
    assert "--enable_batching=true" in best["flags"] and "max_batch_size { value:" in best["batching_parameters"]
    assert "enabled: true" in best["spec_fragment"]
    winner = next(t for t in result["trials"] if t["index"] == best["trial"])
    parts = winner["breakdown"]["grpc image_bytes"]
    assert parts["batch_size_mean"] > 1 and parts["queue_ms"] > 0, parts
    assert result["pareto"] and all(p["slo_ms"] <= 200 for p in result["pareto"])
    run_dir = tmp_path / "reports" / "weight_bound" / "tune" / "latest"
    for name in ("tune.html", "pareto.png", "trials/01/report.html", "trials/01/capacity.json"):
        assert (run_dir / name).is_file(), name
    page = render(run_dir / "tune.html")  # the Pareto chart, drawn by report.js from the page's data
    passing = sum(len(t["pareto_points"]) for t in result["trials"])
    assert page["errors"] == [] and page["charts"]["chart-pareto"]["circle"] == passing > 0, page
    assert "x the default's capacity" in done.stdout
    # serving.tuned: latest serves the recommendation
    tuned = write_spec(tmp_path, str(spec_path), **{"serving.tuned": "latest"})
    serving = load_spec(tuned).serving
    assert serving.batching.enabled and serving.batching.max_batch_size == best["config"]["max_batch_size"]
    _nothing_running(spec_path)


@pytest.mark.measures
def test_tune_keeps_batching_off_where_it_does_not_pay_and_says_why(tmp_path):
    # p90 as above: at this model's 25-40 req/s a p99 needs windows of 25 s and more (1000 requests); the decision
    # does not depend on the percentile. Two batch threads, as many as the cores: with one, the batching trial
    # also runs one batch at a time where the baseline shares the cores among every request in flight, a change
    # of scheduling beside the batching (with one thread, 1 run in 9 here measured 1.40x, 38.5 against 27.5
    # req/s, at the same 47 core-ms per request; the others 0.70-0.96x or pruned)
    spec_path = _spec(tmp_path, "specs/compute_bound.yaml", **{
        "benchmark.slo": "p90:200ms",
        "tune.batching": [False, True], "tune.max_batch_size": [8], "tune.batch_timeout_micros": [10000],
        "tune.num_batch_threads": [2], "tune.budget": "20m"})
    done = _tune(spec_path)
    assert done.returncode in (0, 4), done.stdout[-4000:] + done.stderr[-3000:]
    result = _result(spec_path)
    assert len(result["trials"]) == 2
    assert not result["best"]["config"]["batching"], result["headline"]
    verdict = result["batching"]
    assert not verdict["recommended"] and "batching is not recommended" in verdict["why"], verdict
    assert "in the batching queue" in verdict["why"] and verdict["queue_ms"] > 0
    assert verdict["cost_measure"] == "server_core_ms_per_request" and verdict["runtime_gain"] > 0
    # the explanation follows the measured CPU per request: batches of 2-3 convolutions can cost up to a fifth less
    # per image (a CI run: 12.8 against 10.5 core-ms, 1.21x), which the queue time then eats up; or nothing less
    bar = 1.0 + result["min_gain"]
    explained = ("a runtime gain that the queue time and the batch timeout eat up" if verdict["runtime_gain"] >= bar
                 else "queue time without a runtime gain")
    assert explained in verdict["why"], verdict
    batched = result["trials"][1]
    if batched["status"] == "pruned":  # it missed the SLO below the baseline's capacity: no capacity of its own
        assert batched["capacity_rps"] is None and "was pruned: it missed the SLO at" in verdict["why"], verdict
    else:  # batching's capacity gain is no gain
        assert batched["capacity_rps"] <= bar * result["trials"][0]["capacity_rps"] \
            or result["trials"][0]["status"] == "limited", result["headline"]
    assert verdict["why"] in done.stdout
    _nothing_running(spec_path)


def _digits_spec(tmp_path, digits_export, **more):
    """The mechanics tests' search: no figure is judged, so a probe does not settle (stability_percent 1000: it
    measures its window and is judged; settling made probes far within the SLO run 9 s instead of 3)."""
    spec_path, version_dir = digits_export
    return _spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "benchmark.slo": "p99:100ms",
        "tune.batching": [False, True], "tune.max_batch_size": [4, 8], "tune.batch_timeout_micros": [1000],
        "tune.num_batch_threads": [1], "tune.budget": "30m", "benchmark.precision": "50%",
        "benchmark.stability_percent": 1000, **more})


def test_an_interrupted_tune_resumes_records_a_failed_deployment_and_leaves_nothing_running(tmp_path,
                                                                                            digits_export):
    """One search of three trials (the baseline; batches of 4, which the server refuses to start with; batches of
    8) is interrupted in its third trial and resumed: the failed trial is recorded and the search went on past it,
    Ctrl-C leaves nothing running, and the resumed search measures only what was not done."""
    spec_path = _digits_spec(tmp_path, digits_export)
    with interruptible("-m", "tests.tunefail", "--spec", str(spec_path), own_group=True,
                       cleanup=lambda: run_cli("-m", "deploy", "down", "--spec", str(spec_path))) as proc:
        seen, deadline = "", time.monotonic() + 600
        while "trial 3:" not in seen and time.monotonic() < deadline:  # trials 1 and 2 are checkpointed, 3 begins
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "trial 3:" in seen, seen[-3000:] + proc.stderr.read()[-3000:]
        assert "trial 2 failed: " in seen and REFUSAL in seen, seen[-3000:]
        time.sleep(8)  # into trial 3's deployment or first probe
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    _nothing_running(spec_path)
    first = _result(spec_path)
    assert not first["complete"] and [t["status"] for t in first["trials"]][1:] == ["failed"], first["trials"]
    assert REFUSAL in first["trials"][1]["error"]

    done = _tune(spec_path)  # resumed without the refusal: the failed trial stays failed, not retried
    assert done.returncode in (0, 4), done.stdout[-4000:] + done.stderr[-3000:]
    assert "tune: resuming" in done.stdout and "2 trials done" in done.stdout
    result = _result(spec_path)
    assert result["complete"] and result["report_dir"] == first["report_dir"]
    assert [t["index"] for t in result["trials"]] == [1, 2, 3]
    assert result["trials"][:2] == first["trials"], "a finished trial was measured again"
    statuses = {t["index"]: t["status"] for t in result["trials"]}
    assert statuses[2] == "failed" and statuses[3] in ("measured", "limited", "pruned"), statuses
    assert result["coverage"]["failed"] == 1 and result["best"]["trial"] != 2
    _nothing_running(spec_path)


def test_tune_mistakes_are_one_line(tmp_path, digits_export):
    spec_path = _digits_spec(tmp_path, digits_export)
    for args, says in ((("--slo", "soon"), "not an SLO"), (("--budget", "soon"), "not a duration"),
                       (("--strategy", "random"), "'quick' or 'grid'"),
                       (("--protocols", "smtp"), "protocols")):
        done = _tune(spec_path, *args, timeout=120)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    no_slo = write_spec(tmp_path, str(spec_path), **{"benchmark.slo": None})
    done = _tune(no_slo, timeout=120)
    assert done.returncode == 2 and "tune needs a latency objective" in done.stderr
