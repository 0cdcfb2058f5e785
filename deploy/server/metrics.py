"""Prometheus metrics with TF Serving's names and exposition format (util/prometheus_exporter.cc).

`/tensorflow/serving/request_count` {model_name, status} and `/tensorflow/serving/request_latency`
{model_name, API, entrypoint} (microseconds, buckets Exponential(10, 1.8, 33)) are recorded for every
REST request and every gRPC Predict / Classify / Regress, as TF Serving does.
"""
from __future__ import annotations

import bisect
import re
import threading
from collections import defaultdict

LATENCY_BUCKETS = [10 * 1.8 ** i for i in range(33)]


def exported_name(name: str) -> str:
    """TF metric path -> Prometheus name: every char outside [a-zA-Z0-9_] becomes ':'."""
    return re.sub(r"[^a-zA-Z0-9_]", ":", name)


def _labels(pairs: tuple) -> str:
    return "{" + ",".join(f'{re.sub(r"[^a-zA-Z0-9_]", "_", k)}="{v}"' for k, v in pairs) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
        self._histograms: dict[str, dict[tuple, list]] = defaultdict(dict)

    def count(self, name: str, labels: tuple, value: int = 1) -> None:
        with self._lock:
            self._counters[name][labels] += value

    def observe(self, name: str, labels: tuple, value: float) -> None:
        with self._lock:
            series = self._histograms[name].get(labels)
            if series is None:
                series = self._histograms[name][labels] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0, 0]
            series[0][bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
            series[1] += value
            series[2] += 1

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, latency_us: float) -> None:
        """One served request: its count by status, and its latency when it succeeded."""
        self.count("/tensorflow/serving/request_count", (("model_name", model_name), ("status", status)))
        if status == "OK":
            self.observe("/tensorflow/serving/request_latency",
                         (("model_name", model_name), ("API", api), ("entrypoint", entrypoint)), latency_us)

    def counter_value(self, name: str, labels: tuple) -> int:
        with self._lock:
            return self._counters.get(name, {}).get(labels, 0)

    def render(self) -> str:
        """The Prometheus text exposition, lines joined by newlines with a trailing newline."""
        lines = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                lines.append(f"# TYPE {exported_name(name)} counter")
                lines += [f"{exported_name(name)}{_labels(k)} {v}" for k, v in sorted(series.items())]
            for name, series in sorted(self._histograms.items()):
                metric = exported_name(name)
                lines.append(f"# TYPE {metric} histogram")
                for labels, (buckets, total, count) in sorted(series.items()):
                    cumulative = 0
                    for limit, hits in zip(LATENCY_BUCKETS + [None], buckets):
                        cumulative += hits
                        le = "+Inf" if limit is None else f"{limit:.6g}"
                        lines.append(f"{metric}_bucket{_labels(labels + (('le', le),))} {cumulative}")
                    lines.append(f"{metric}_sum{_labels(labels)} {total:.6g}")
                    lines.append(f"{metric}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"
