"""Metrics: TF Serving's names, labels and bucket limits in the Prometheus text, and where they are recorded."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from server.dataplane import WARMUP_FILE, DataPlane
from server.errors import DataLoss
from server.metrics import Metrics


def _series(text: str, metric: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(metric + "{") or line.startswith(metric + "_")]


def test_each_histogram_keeps_its_own_buckets():
    metrics = Metrics()
    metrics.record_examples("m", 3)
    metrics.record_examples("m", 20000)  # beyond the last limit (2**14): only +Inf
    metrics.record_runtime("m", "Predict", 15.0)
    text = metrics.render()
    examples = _series(text, ":tensorflow:serving:request_example_counts")
    limits = [re.search(r'le="([^"]+)"', line).group(1) for line in examples if "_bucket" in line]
    assert limits == [str(2 ** i) for i in range(15)] + ["+Inf"]
    assert ':tensorflow:serving:request_example_counts_bucket{model="m",le="16384"} 1' in examples
    assert ':tensorflow:serving:request_example_counts_bucket{model="m",le="+Inf"} 2' in examples
    assert ':tensorflow:serving:request_example_count_total{model="m"} 20003' in text
    runtime = [line for line in _series(text, ":tensorflow:serving:runtime_latency") if "_bucket" in line]
    assert len(runtime) == 34 and runtime[0].endswith('le="10"} 0') and runtime[1].endswith('le="18"} 1')
    assert "# TYPE :tensorflow:serving:request_example_counts histogram" in text
    assert "# TYPE :tensorflow:serving:request_example_count_total counter" in text


def test_load_attempts_count_both_outcomes_and_latency_only_on_success():
    metrics = Metrics()
    metrics.record_load("/m/1", True, 1500.4)
    metrics.record_load("/m/2", False, 0)
    text = metrics.render()
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="/m/1",status="success"} 1' in text
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="/m/2",status="fail"} 1' in text
    assert ':tensorflow:cc:saved_model:load_latency{model_path="/m/1"} 1500' in text
    assert 'load_latency{model_path="/m/2"}' not in text


def test_warmup_latency_records_a_failed_read_with_its_status(tmp_path):
    (tmp_path / WARMUP_FILE).parent.mkdir()
    (tmp_path / WARMUP_FILE).write_bytes(b"this is not a TFRecord file")
    plane = DataPlane(repository=None)
    with pytest.raises(DataLoss):
        plane.warmup("m", 1, SimpleNamespace(path=str(tmp_path)))
    text = plane.metrics.render()
    assert re.search(rf':tensorflow:serving:model_warmup_latency_count{{model_path="{tmp_path}",'
                     r'status="DATA_LOSS: Error reading warmup data at [^"]+"} 1', text), text


def test_no_warmup_file_records_nothing(tmp_path):
    plane = DataPlane(repository=None)
    assert plane.warmup("m", 1, SimpleNamespace(path=str(tmp_path))) == 0
    assert "model_warmup_latency" not in plane.metrics.render()


def test_label_values_are_escaped_so_the_page_stays_parseable():
    metrics = Metrics()
    metrics.record_request('a"b\\c\nd', "predict", "REST", "NOT_FOUND", 0)
    assert ':tensorflow:serving:request_count{model_name="a\\"b\\\\c\\nd",status="NOT_FOUND"} 1' in metrics.render()
