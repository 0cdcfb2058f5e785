"""Prometheus metrics with TF Serving's names and exposition format (util/prometheus_exporter.cc).

What is recorded, and where (the same places as in TF Serving):

| metric | kind, labels | recorded |
|---|---|---|
| `/tensorflow/serving/request_count` | counter {model_name, status} | every REST request, gRPC Predict/Classify/Regress |
| `/tensorflow/serving/request_latency` | histogram µs {model_name, API, entrypoint} | the same, on success |
| `/tensorflow/serving/runtime_latency` | histogram µs {model_name, API, runtime="TF1"} | the model run of Predict/Classify/Regress |
| `/tensorflow/serving/request_example_counts` | histogram {model} | tf.Examples per Classify/Regress/MultiInference |
| `/tensorflow/serving/request_example_count_total` | counter {model} | the same, summed |
| `/tensorflow/serving/model_warmup_latency` | histogram µs {model_path, status} | each version with a warmup file |
| `/tensorflow/serving/batching_session/queuing_latency` | histogram µs {thread_pool_name} | each batched request |
| `/tensorflow/serving/batching_session/wrapped_run_count` | counter {} | each batch run |
| `/tensorflow/serving/batching_session/input_batch_size` | histogram {} | each batched request's 0th dimension, once per input tensor |
| `/tensorflow/serving/batching_session/processed_batch_size` | histogram {} | each batch run, its size after padding |
| `/tensorflow/serving/batching_session/padding_size` | histogram {execution_batch_size} | each batch run, the rows of padding |
| `/tensorflow/cc/saved_model/load_attempt_count` | counter {model_path, status="success"/"fail"} | each load attempt |
| `/tensorflow/cc/saved_model/load_latency` | counter µs {model_path} | each successful load |

Histogram buckets are TF's Exponential(scale, growth, count) limits plus +Inf. As in TF's Histogram::Add
(std::upper_bound), a value equal to a limit counts in the next bucket: `le="8"` holds values below 8.
"""
from __future__ import annotations

import bisect
import re
import threading
from collections import defaultdict
from typing import Sequence



def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    """TF's monitoring::Buckets::Exponential limits (the +Inf bucket is implicit)."""
    return [scale * growth ** i for i in range(count)]


LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)      # µs, up to ~20 minutes
EXAMPLE_COUNT_BUCKETS = exponential_buckets(1, 2, 15)   # 1, 2, 4, ... 16384 examples
QUEUING_BUCKETS = exponential_buckets(100, 1.2, 52)     # µs, up to ~1 second
BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 14)      # 1, 2, 4, ... 8192 (batching_util.h)


def exported_name(name: str) -> str:
    """TF metric path -> Prometheus name: every char outside [a-zA-Z0-9_] becomes ':'."""
    return re.sub(r"[^a-zA-Z0-9_]", ":", name)


def _label_value(value) -> str:
    """Escaped as the Prometheus text format requires: a model name from a URL may hold any character."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple) -> str:
    return "{" + ",".join(f'{re.sub(r"[^a-zA-Z0-9_]", "_", k)}="{_label_value(v)}"' for k, v in pairs) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
        self._histograms: dict[str, tuple[list[float], dict[tuple, list]]] = {}

    def count(self, name: str, labels: tuple, value: int = 1) -> None:
        with self._lock:
            self._counters[name][labels] += value

    def observe(self, name: str, labels: tuple, value: float, buckets: list[float] = LATENCY_BUCKETS) -> None:
        with self._lock:
            limits, all_series = self._histograms.setdefault(name, (buckets, {}))
            series = all_series.get(labels)
            if series is None:
                series = all_series[labels] = [[0] * (len(limits) + 1), 0.0, 0]
            series[0][bisect.bisect_right(limits, value)] += 1
            series[1] += value
            series[2] += 1

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, latency_us: float) -> None:
        """One served request: its count by status, and its latency when it succeeded."""
        self.count("/tensorflow/serving/request_count", (("model_name", model_name), ("status", status)))
        if status == "OK":
            self.observe("/tensorflow/serving/request_latency",
                         (("model_name", model_name), ("API", api), ("entrypoint", entrypoint)), latency_us)

    def record_runtime(self, model_name: str, api: str, latency_us: float) -> None:
        """The model run itself (Predict/Classify/Regress), without decoding and encoding."""
        self.observe("/tensorflow/serving/runtime_latency",
                     (("model_name", model_name), ("API", api), ("runtime", "TF1")), latency_us)

    def record_examples(self, model_name: str, count: int) -> None:
        """tf.Examples in one Classify, Regress or MultiInference request."""
        self.observe("/tensorflow/serving/request_example_counts", (("model", model_name),), count,
                     EXAMPLE_COUNT_BUCKETS)
        self.count("/tensorflow/serving/request_example_count_total", (("model", model_name),), count)

    def record_warmup(self, model_path: str, status: str, latency_us: float) -> None:
        self.observe("/tensorflow/serving/model_warmup_latency", (("model_path", model_path), ("status", status)),
                     latency_us)

    def record_batch(self, thread_pool_name: str, queuing_us: Sequence[float]) -> None:
        """One run of the wrapped model on a batch, and how long each of its requests waited in the queue."""
        self.count("/tensorflow/serving/batching_session/wrapped_run_count", ())
        for value in queuing_us:
            self.observe("/tensorflow/serving/batching_session/queuing_latency",
                         (("thread_pool_name", thread_pool_name),), value, QUEUING_BUCKETS)

    def record_input_batch_size(self, size: int, input_tensors: int) -> None:
        """A request entering the batcher: its 0th dimension, once per input tensor (BatchingSession does that)."""
        for _ in range(input_tensors):
            self.observe("/tensorflow/serving/batching_session/input_batch_size", (), size, BATCH_SIZE_BUCKETS)

    def record_processed_batch(self, padded_size: int, padding: int) -> None:
        """One batch as run: its size after padding, and the padding rows labelled by that size."""
        self.observe("/tensorflow/serving/batching_session/padding_size",
                     (("execution_batch_size", str(padded_size)),), padding, BATCH_SIZE_BUCKETS)
        self.observe("/tensorflow/serving/batching_session/processed_batch_size", (), padded_size,
                     BATCH_SIZE_BUCKETS)

    def record_load(self, model_path: str, succeeded: bool, latency_us: float) -> None:
        """One attempt to load a SavedModel (TF core's counters, which TF Serving exports too)."""
        self.count("/tensorflow/cc/saved_model/load_attempt_count",
                   (("model_path", model_path), ("status", "success" if succeeded else "fail")))
        if succeeded:
            self.count("/tensorflow/cc/saved_model/load_latency", (("model_path", model_path),), round(latency_us))

    def render(self) -> str:
        """The Prometheus text exposition, lines joined by newlines with a trailing newline."""
        lines = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                lines.append(f"# TYPE {exported_name(name)} counter")
                lines += [f"{exported_name(name)}{_labels(k)} {v}" for k, v in sorted(series.items())]
            for name, (limits, series) in sorted(self._histograms.items()):
                metric = exported_name(name)
                lines.append(f"# TYPE {metric} histogram")
                for labels, (buckets, total, count) in sorted(series.items()):
                    cumulative = 0
                    for limit, hits in zip(limits + [None], buckets):
                        cumulative += hits
                        le = "+Inf" if limit is None else f"{limit:.6g}"
                        lines.append(f"{metric}_bucket{_labels(labels + (('le', le),))} {cumulative}")
                    lines.append(f"{metric}_sum{_labels(labels)} {total:.6g}")
                    lines.append(f"{metric}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"
