"""The server-side breakdown against the embedded server, where the truth is arranged:

* a gRPC proxy that holds each call 50 ms: the breakdown puts those 50 ms outside the server, and the server's
  own request latency stays near its direct value;
* batching on with concurrent users: queue time and batch sizes appear and fit the batching parameters.

Every run also checks that the server's request count matches the client's within the scrape timing, and that
the server's latency never exceeds the client's (at a percentile, the server's bucket starts at or below it).
"""
from __future__ import annotations

import contextlib
import dataclasses

import pytest

from loadtests.analyze import validity
from loadtests.drive.payloads import request_bytes
from loadtests.drive.servermetrics import metrics_url
from loadtests.measure.payloadsets import load_or_build
from loadtests.measure.run import Step, Target, run_and_measure
from spec.loader import load_spec
from tests.grpcproxy import DelayProxy
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.measures]

MONITORING = 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n'
DELAY_MS = 50.0
RULES = validity.Rules(min_duration_s=1.0, stability_percent=1000)  # mechanics, not validity


@pytest.fixture(scope="module")
def payloads(digits_export):
    spec_path, version_dir = digits_export
    return load_or_build(load_spec(spec_path), version_dir, ["image_b64"], log=lambda line: None)


@contextlib.contextmanager
def _serve(tmp_path, version_dir, *flags):
    (tmp_path / "monitoring.config").write_text(MONITORING)
    server = ServerProcess("--model_name=digits_cnn", f"--model_base_path={version_dir.parent}",
                           f"--monitoring_config_file={tmp_path / 'monitoring.config'}", *flags, log_dir=tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _runner(server, payloads, out_dir, **changes):
    payload_set, payload_file = payloads
    sizes = {(p, "image_b64"): request_bytes(payload_set, p, "image_b64", "digits_cnn") for p in ("rest", "grpc")}
    target = Target(model="digits_cnn", rest_url=server.rest, grpc_target=server.grpc_target,
                    payload_file=payload_file, warmup_s=1.0, duration_s=4.0, spawn_rate=50,
                    server_pid=server.proc.pid,
                    metrics_url=metrics_url(server.rest, "/monitoring/prometheus/metrics"), **changes)

    def run(step: Step, **more) -> dict:
        return run_and_measure(step, dataclasses.replace(target, **more), out_dir, sizes, payload_set.sizes, RULES)
    return run


def _consistent(r: dict) -> dict:
    """The server's account agrees with the client's: counts within the scrape timing, latency never above."""
    server = r["server"]
    assert server["available"], server
    assert abs(server["requests"] - server["client_requests"]) <= 2 * r["users"] + 2, server
    assert server["request_mean_ms"] <= r["service_mean_ms"]
    for q in (50, 99):
        lower, upper = server[f"request_p{q}_bucket_ms"]
        assert lower <= r[f"p{q}_ms"], (q, server, r)
    return server


def test_a_delay_in_front_of_the_server_is_put_outside_it(tmp_path, digits_export, payloads):
    with _serve(tmp_path, digits_export[1]) as server, DelayProxy(server.grpc_target, DELAY_MS / 1000) as proxy:
        run = _runner(server, payloads, tmp_path / "out")
        direct = run(Step("grpc", "image_b64", users=2))
        proxied = run(Step("grpc", "image_b64", users=2, tag="proxy"), grpc_target=proxy.target)
    for r in (direct, proxied):
        _consistent(r)
        assert r["failures"] == 0 and r["requests"] > 20
    near, far = direct["server"]["request_mean_ms"], proxied["server"]["request_mean_ms"]
    print(f"direct: client {direct['service_mean_ms']:.2f} ms, server {near:.2f} ms; through the "
          f"{DELAY_MS:g} ms proxy: client {proxied['service_mean_ms']:.2f} ms, server {far:.2f} ms, outside "
          f"{proxied['breakdown']['outside_server_ms']:.2f} ms ({proxy.calls} calls proxied)")
    assert proxied["breakdown"]["outside_server_ms"] >= 45.0
    assert direct["breakdown"]["outside_server_ms"] < 20.0
    # the server's own time does not take the delay: an idle server wakes slower, but by milliseconds, not 50
    assert far < near + 5.0 and far < 0.1 * proxied["service_mean_ms"]
    assert proxied["p50_ms"] >= DELAY_MS and proxied["server"]["request_p50_ms"] < DELAY_MS / 5


def test_batching_shows_its_queue_and_batch_sizes(tmp_path, digits_export, payloads):
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 4000 }\nnum_batch_threads { value: 1 }\n"
        "max_enqueued_batches { value: 100 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    with _serve(tmp_path, digits_export[1], "--enable_batching",
                f"--batching_parameters_file={tmp_path / 'batching.config'}") as server:
        run = _runner(server, payloads, tmp_path / "out")
        batched = run(Step("grpc", "image_b64", users=8))
        rest = run(Step("rest", "image_b64", users=8))
    for r in (batched, rest):
        server = _consistent(r)
        print(f"{r['protocol']}: batch size mean {server['batch_size_mean']:.2f} over {server['batches']} batches, "
              f"padding {server['padding_ratio']:.1%}, queue {server['queue_mean_ms']:.2f} ms of runtime "
              f"{server['runtime_mean_ms']:.2f} ms")
        assert server["batching"] and server["batches"] > 0
        assert 1.0 < server["batch_size_mean"] <= 8.0
        lower, upper = server["batch_size_max_bucket"]
        assert lower <= 8  # TF's buckets: a batch of 8 counts in [8, 16); nothing larger was ever run
        # padded up to an allowed size (4 or 8): the padding is a share of the rows run, and batches hold >= 1 row
        assert 0.0 <= server["padding_ratio"] < 0.75
        assert server["batches"] <= server["requests"] + 8
        # runtime_latency includes the wait in the queue (TF Serving's session run does)
        assert 0 < server["queue_mean_ms"] < server["runtime_mean_ms"]
        parts = r["breakdown"]
        assert parts["queue_ms"] == pytest.approx(server["queue_mean_ms"]) and parts["model_ms"] > 0
