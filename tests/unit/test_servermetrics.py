"""The server-side breakdown: Prometheus parsing, histogram deltas and percentiles, the server block."""
from __future__ import annotations

import pytest

from loadtests.drive import servermetrics as sm
from server.metrics import Metrics


def _scrapes(before: Metrics, after_text: str, url: str = "http://127.0.0.1:1/m") -> dict:
    return {"url": url, "before": {"text": before, "took_s": 0.001}, "after": {"text": after_text, "took_s": 0.001}}


def test_parse_reads_labels_escapes_and_skips_comments():
    text = ('# TYPE :a counter\n:a{model_name="x\\"y\\\\z\\nw",status="OK"} 3\n:b{} 2.5\n:c 7 1700000000\n'
            'not a sample line at all\n')
    samples = sm.parse(text)
    assert samples == [(":a", {"model_name": 'x"y\\z\nw', "status": "OK"}, 3.0), (":b", {}, 2.5), (":c", {}, 7.0)]


def test_histogram_delta_mean_and_interpolated_percentiles():
    before, after = Metrics(), Metrics()
    for metrics in (before, after):
        metrics.record_request("m", "Predict", "GRPC", "OK", 5.0)  # in both: cancels out
    for value in [100.0] * 50 + [1000.0] * 49 + [50_000.0]:
        after.record_request("m", "Predict", "GRPC", "OK", value)
    after.record_request("m", "predict", "REST", "OK", 9e9)  # another entrypoint: not counted
    grown = sm.Histogram.of(sm.parse(after.render()), sm.REQUEST_LATENCY, model_name="m", entrypoint="GRPC").minus(
        sm.Histogram.of(sm.parse(before.render()), sm.REQUEST_LATENCY, model_name="m", entrypoint="GRPC"))
    assert grown.count == 100 and grown.mean == pytest.approx((5000 + 49000 + 50000) / 100)
    value, lower, upper = grown.percentile(50)
    assert lower <= 100.0 < upper and lower <= value <= upper  # TF buckets: a value lies in [lower, upper)
    value, lower, upper = grown.percentile(99)
    assert lower <= 1000.0 < upper and value == pytest.approx(upper)  # rank 99 is the bucket's last sample
    assert grown.percentile(100)[1] <= 50_000.0 < grown.percentile(100)[2]


def test_a_counter_that_went_down_means_a_restart_not_a_negative_latency():
    before, after = Metrics(), Metrics()
    before.record_request("m", "predict", "REST", "OK", 100.0)
    before.record_request("m", "predict", "REST", "OK", 100.0)
    after.record_request("m", "predict", "REST", "OK", 100.0)
    block = sm.server_block(_scrapes(before.render(), after.render()), "m", "rest")
    assert not block["available"] and "restarted" in block["reason"]


def test_server_block_from_two_scrapes_with_batching():
    before, after = Metrics(), Metrics()
    after.record_request("m", "predict", "REST", "OK", 4000.0)
    after.record_request("m", "predict", "REST", "OK", 6000.0)
    after.record_request("m", "predict", "REST", "INVALID_ARGUMENT", 0)
    after.record_runtime("m", "Predict", 3000.0)
    after.record_runtime("m", "Predict", 3000.0)
    after.record_runtime("other", "Predict", 1e9)  # another model: not counted
    after.record_batch("pool", [1000.0, 2000.0])
    after.record_processed_batch(4, 1)  # 3 requests' rows + 1 of padding
    after.record_processed_batch(2, 0)
    block = sm.server_block(_scrapes(before.render(), after.render()), "m", "rest")
    assert block["available"] and block["requests"] == 2 and block["errors"] == 1
    assert block["request_mean_ms"] == pytest.approx(5.0) and block["runtime_mean_ms"] == pytest.approx(3.0)
    assert block["queue_mean_ms"] == pytest.approx(1.5) and block["batching"] and block["batches"] == 2
    assert block["batch_size_mean"] == pytest.approx(2.5) and block["padding_ratio"] == pytest.approx(1 / 6)
    assert block["batch_size_max_bucket"] == [4.0, 8.0]  # a batch of 4 counts in [4, 8), as in TF
    lower, upper = block["request_p50_bucket_ms"]
    assert lower <= 4.0 < upper
    parts = sm.breakdown({"server": block, "service_mean_ms": 7.5})
    assert parts == {"client_mean_ms": 7.5, "outside_server_ms": 2.5, "server_overhead_ms": 2.0,
                     "queue_ms": 1.5, "model_ms": 1.5}


@pytest.mark.parametrize("facts, reason", [
    (None, "no metrics URL"),
    ({"url": "http://127.0.0.1:1/m", "before": {"error": "URLError: refused"}, "after": {"text": ""}},
     "failed: URLError: refused"),
    ({"url": "http://127.0.0.1:1/m", "before": {"text": "<html>hi</html>"}, "after": {"text": "<html>hi</html>"}},
     "is it a TF Serving metrics page"),
])
def test_no_metrics_says_why_and_invents_nothing(facts, reason):
    block = sm.server_block(facts, "m", "grpc")
    assert block["available"] is False and reason in block["reason"]
    assert "request_mean_ms" not in block and sm.breakdown({"server": block, "service_mean_ms": 1.0}) is None


def test_scraper_records_an_unreachable_endpoint_as_an_error():
    from server.process import free_port

    scraper = sm.Scraper(f"http://127.0.0.1:{free_port('127.0.0.1')}/monitoring/prometheus/metrics", timeout_s=2)
    scraper.scrape("before")
    assert "error" in scraper.facts()["server_metrics"]["before"]
    assert sm.Scraper(None).facts() == {}


def test_cpu_per_request_counts_every_generating_process():
    entry = {"rps": 100.0, "window_s": 10.0}
    meta = {"server_cpu_percent": 150.0, "generator_cpu_by_process": [40.0, 60.0]}
    assert sm.cpu_per_request(entry, meta) == {"server_core_ms_per_request": pytest.approx(15.0),
                                               "generator_core_ms_per_request": pytest.approx(10.0)}
    assert sm.cpu_per_request({"rps": 0.0, "window_s": 10.0}, meta)["server_core_ms_per_request"] is None


def test_the_terminal_says_why_a_run_has_no_breakdown():
    from loadtests.report import breakdown_lines

    run = {"protocol": "grpc", "wire": "image_bytes", "mode": "closed", "users": 1, "level": 1,
           "server": sm.unavailable("http://127.0.0.1:1/m", "scraping failed: refused"), "breakdown": None}
    assert "no server metrics (scraping failed: refused)" in "\n".join(breakdown_lines([run]))
