"""Where a run's time went, by the server's own account: TF Serving's Prometheus metrics around the window.

The load generator scrapes the server's metrics page at the start of the span a run's figures come from and at
its end (`Scraper`, which scrapes at every sub-window boundary and keeps those two). Only the differences between the two scrapes count, so whatever the server did before (the
warm-up, earlier runs, other clients' traffic before the window) cancels out. From those deltas, per run:

* `server`: the server's request latency (`:tensorflow:serving:request_latency`, for this model, API and
  entrypoint), the model's runtime (`runtime_latency`), the batching queue (`batching_session:queuing_latency`),
  batch sizes and padding (`batching_session:processed_batch_size`, `padding_size`), and its request count.
* `breakdown`: the client's mean time split into outside the server, the server's own overhead, queueing and
  the model. Means, because means add up; percentiles do not.

TF Serving and the embedded server export the same names, labels and buckets, so this reads both.
Histogram percentiles can only be known to within a bucket: they are interpolated linearly inside it (as
Prometheus's histogram_quantile does), and the bucket's bounds are reported with them.
"""
from __future__ import annotations

import math
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterable, Optional

PREFIX = ":tensorflow:serving:"
REQUEST_LATENCY = PREFIX + "request_latency"
REQUEST_COUNT = PREFIX + "request_count"
RUNTIME_LATENCY = PREFIX + "runtime_latency"
QUEUING_LATENCY = PREFIX + "batching_session:queuing_latency"
PROCESSED_BATCH_SIZE = PREFIX + "batching_session:processed_batch_size"
PADDING_SIZE = PREFIX + "batching_session:padding_size"
# (API, entrypoint) labels of a Predict call, as TF Serving records them (http_server.cc, prediction_service_impl.cc)
PREDICT_LABELS = {"rest": ("predict", "REST"), "grpc": ("Predict", "GRPC")}
PERCENTILES = (50, 90, 95, 99)
SCRAPE_TIMEOUT_S = 5.0

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def metrics_url(rest_url: str, path: str) -> str:
    return rest_url.rstrip("/") + path


def parse(text: str) -> list[tuple[str, dict, float]]:
    """The samples of a Prometheus text exposition: (name, labels, value); comments and junk lines skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, raw_labels, raw_value = match.groups()
        labels = {}
        for key, value in _LABEL.findall(raw_labels or ""):
            labels[key] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], value)
        try:
            samples.append((name, labels, float(raw_value)))
        except ValueError:
            continue
    return samples


@dataclass(frozen=True)
class Histogram:
    """One histogram's buckets (counts per bucket, not cumulative), summed over the matching series."""
    limits: tuple[float, ...]   # upper limits of every bucket, the last one inf
    counts: tuple[float, ...]
    total: float                # the _sum
    count: float                # the _count

    @classmethod
    def of(cls, samples: Iterable[tuple[str, dict, float]], metric: str, **want: str) -> Optional["Histogram"]:
        """Every series of `metric` whose labels include `want`, added up; None if there is none."""
        buckets: dict[float, float] = {}
        total = count = 0.0
        found = False
        for name, labels, value in samples:
            if any(labels.get(k) != v for k, v in want.items()):
                continue
            if name == metric + "_bucket" and "le" in labels:
                limit = math.inf if labels["le"] in ("+Inf", "Inf", "inf") else float(labels["le"])
                buckets[limit] = buckets.get(limit, 0.0) + value
                found = True
            elif name == metric + "_sum":
                total += value
            elif name == metric + "_count":
                count += value
        if not found:
            return None
        limits = tuple(sorted(buckets))
        cumulative = [buckets[limit] for limit in limits]
        counts = tuple(c - p for c, p in zip(cumulative, [0.0] + cumulative[:-1]))
        return cls(limits, counts, total, count)

    def minus(self, before: Optional["Histogram"]) -> "Histogram":
        """This histogram's growth since `before` (None: it did not exist then, so all of it is new)."""
        if before is None:
            return self
        if before.limits != self.limits:
            raise ValueError("the histogram's buckets changed between the scrapes (was the server restarted?)")
        counts = tuple(a - b for a, b in zip(self.counts, before.counts))
        if min(counts, default=0) < 0 or self.count < before.count:
            raise ValueError("a histogram went down between the scrapes: the server was restarted during the run")
        return Histogram(self.limits, counts, self.total - before.total, self.count - before.count)

    @property
    def mean(self) -> Optional[float]:
        return self.total / self.count if self.count > 0 else None

    def bucket_of(self, q: float) -> Optional[tuple[int, float, float]]:
        """(index, lower, upper) of the bucket holding the q-th percentile; None when empty."""
        if self.count <= 0:
            return None
        rank, seen = q / 100.0 * self.count, 0.0
        for index, (limit, hits) in enumerate(zip(self.limits, self.counts)):
            if hits > 0 and seen + hits >= rank:
                return index, (self.limits[index - 1] if index else 0.0), limit
            seen += hits
        last = max(i for i, c in enumerate(self.counts) if c > 0)
        return last, (self.limits[last - 1] if last else 0.0), self.limits[last]

    def percentile(self, q: float) -> Optional[tuple[float, float, float]]:
        """(value, bucket lower, bucket upper): linear inside the bucket; the +Inf bucket gives its lower bound."""
        found = self.bucket_of(q)
        if found is None:
            return None
        index, lower, upper = found
        if math.isinf(upper):
            return lower, lower, upper
        before = sum(self.counts[:index])
        share = (q / 100.0 * self.count - before) / self.counts[index]
        return lower + (upper - lower) * min(max(share, 0.0), 1.0), lower, upper

    def highest(self) -> Optional[tuple[float, float]]:
        """Bounds of the highest non-empty bucket."""
        filled = [i for i, c in enumerate(self.counts) if c > 0]
        if not filled:
            return None
        i = filled[-1]
        return (self.limits[i - 1] if i else 0.0), self.limits[i]


class Scraper:
    """Fetches the metrics page at every sub-window boundary (in the process that times the window); `choose`
    keeps the two that bound the span the run's figures come from, as "before" and "after"."""

    def __init__(self, url: Optional[str], timeout_s: float = SCRAPE_TIMEOUT_S):
        self.url = url
        self.timeout_s = timeout_s
        self.scrapes: dict[str, dict] = {}

    def scrape(self, when: str) -> None:
        if not self.url:
            return
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8", "replace")
            self.scrapes[when] = {"text": text, "took_s": time.perf_counter() - started}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            self.scrapes[when] = {"error": f"{type(exc).__name__}: {reason}"}

    def choose(self, before: str, after: str) -> None:
        """Keep only the scrapes `before` and `after`, under those names (the others are forgotten)."""
        chosen = {"before": self.scrapes.get(before), "after": self.scrapes.get(after)}
        self.scrapes = {when: scrape for when, scrape in chosen.items() if scrape is not None}

    def facts(self) -> dict:
        return {"server_metrics": {"url": self.url, **self.scrapes}} if self.url else {}


def _ms(value: Optional[float]) -> Optional[float]:
    return None if value is None else value / 1000.0


def unavailable(source: Optional[str], why: str) -> dict:
    return {"available": False, "source": source, "reason": why}


def server_block(facts: Optional[dict], model: str, protocol: str) -> dict:
    """The `server` block of one run from its two scrapes; says why when there are none (nothing invented)."""
    if not facts or not facts.get("url"):
        return unavailable(None, "no metrics URL: serving.monitoring is disabled, or the server was not started "
                                 "by the harness and none was given")
    url = facts["url"]
    for when in ("before", "after"):
        scrape = facts.get(when)
        if scrape is None:
            return unavailable(url, f"the metrics were not scraped {when} the window")
        if "error" in scrape:
            return unavailable(url, f"scraping {url} {when} the window failed: {scrape['error']}")
    before, after = parse(facts["before"]["text"]), parse(facts["after"]["text"])
    api, entrypoint = PREDICT_LABELS[protocol]

    def grown(metric: str, **labels: str) -> Optional[Histogram]:
        now = Histogram.of(after, metric, **labels)
        return None if now is None else now.minus(Histogram.of(before, metric, **labels))

    try:
        request = grown(REQUEST_LATENCY, model_name=model, API=api, entrypoint=entrypoint)
        runtime = grown(RUNTIME_LATENCY, model_name=model, API="Predict")
        queue = grown(QUEUING_LATENCY)
        processed = grown(PROCESSED_BATCH_SIZE)
        padding = grown(PADDING_SIZE)
    except ValueError as exc:
        return unavailable(url, str(exc))
    if request is None:
        return unavailable(url, f"{url} has no {REQUEST_LATENCY} series for model {model!r}, API {api!r}, "
                                f"entrypoint {entrypoint!r}: is it a TF Serving metrics page?")
    block: dict = {"available": True, "source": url, "requests": int(request.count),
                   "errors": _errors(before, after, model),
                   "request_mean_ms": _ms(request.mean)}
    for q in PERCENTILES:
        found = request.percentile(q)
        block[f"request_p{q}_ms"] = _ms(found[0]) if found else None
        block[f"request_p{q}_bucket_ms"] = [_ms(found[1]), _ms(found[2]) if not math.isinf(found[2]) else None] \
            if found else None
    block["runtime_mean_ms"] = _ms(runtime.mean) if runtime else None
    block["runtime_requests"] = int(runtime.count) if runtime else 0
    batched = bool(processed and processed.count > 0)
    block["batching"] = batched
    block["queue_mean_ms"] = _ms(queue.mean) if batched and queue and queue.count else None
    block["batches"] = int(processed.count) if batched else 0
    if batched:
        padded_rows = padding.total if padding else 0.0
        block["batch_size_mean"] = (processed.total - padded_rows) / processed.count
        block["padding_ratio"] = padded_rows / processed.total if processed.total else 0.0
        top = processed.highest()
        block["batch_size_max_bucket"] = [top[0], None if math.isinf(top[1]) else top[1]]
    else:
        block["batch_size_mean"] = block["padding_ratio"] = block["batch_size_max_bucket"] = None
    block["scrape_s"] = [facts["before"].get("took_s"), facts["after"].get("took_s")]
    return block


def _errors(before, after, model: str) -> int:
    """Requests for this model the server answered with an error status during the window."""
    def failed(samples) -> float:
        return sum(v for name, labels, v in samples
                   if name == REQUEST_COUNT and labels.get("model_name") == model and labels.get("status") != "OK")
    return int(failed(after) - failed(before))


def breakdown(entry: dict) -> Optional[dict]:
    """The client's mean time (from the send) split into outside the server, server overhead, queue, model.

    TF Serving's runtime_latency times the session run, and with batching on that run includes the wait in the
    batching queue; so the model's share is the runtime minus the queue time.
    """
    server = entry.get("server") or {}
    client = entry.get("service_mean_ms")
    request, runtime = server.get("request_mean_ms"), server.get("runtime_mean_ms")
    if not server.get("available") or client is None or request is None or math.isnan(client):
        return None
    queue = server.get("queue_mean_ms") or 0.0
    parts = {"client_mean_ms": client, "outside_server_ms": client - request}
    if runtime is None:
        parts.update(server_overhead_ms=None, queue_ms=None, model_ms=None)
    else:
        parts.update(server_overhead_ms=request - runtime, queue_ms=queue if server.get("batching") else None,
                     model_ms=runtime - queue)
    return parts


def cpu_per_request(entry: dict, meta: dict) -> dict:
    """Core-milliseconds per answered request: the server's and all load-generating processes' together."""
    answered = entry["rps"] * entry["window_s"] if entry["window_s"] and not math.isnan(entry["window_s"]) else 0
    server = meta.get("server_cpu_percent")
    generator = [c for c in meta.get("generator_cpu_by_process") or [] if c is not None]
    per = lambda percent: percent / 100.0 * entry["window_s"] * 1000.0 / answered if answered else None
    return {"server_core_ms_per_request": per(server) if server is not None else None,
            "generator_core_ms_per_request": per(sum(generator)) if generator else None}
