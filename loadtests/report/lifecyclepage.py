"""What `make lifecycle` writes: lifecycle.json and lifecycle.html (the cold start's phases per start, the first
requests' latency against their index, memory), and its terminal table."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Optional

from loadtests.drive.files import save_atomically
from loadtests.report import chart_slot, shell
from spec.results import LifecycleResult, standard

PHASES = (("ports_open_s", "to both ports open", "#9ecae1"), ("available_s", "to AVAILABLE", "#3182bd"),
          ("first_answer_s", "to the first correct answer", "#08519c"))
ROWS = (("ports open (s)", "ports_open_s", 2), ("AVAILABLE (s)", "available_s", 2),
        ("first correct answer (s)", "first_answer_s", 2), ("SavedModel load (ms, server)", "load_ms", 0),
        ("warmup (ms, server)", "warmup_ms", 0), ("first request (ms)", "first_request_ms", 1),
        ("p50 of the first requests (ms)", "first_p50_ms", 2), ("steady p50 (ms)", "steady_p50_ms", 2),
        ("slow first requests", "slow_requests", 0), ("time in them (ms)", "slow_ms", 0),
        ("memory at AVAILABLE (MiB)", "memory_available_mb", 0),
        ("memory, first requests' peak (MiB)", "memory_peak_mb", 0))


def _value(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def chart_data(result: LifecycleResult) -> dict:
    """The page's charts: each start's phases, each start's first requests, memory per variant."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    starts, first = [], []
    for i, variant in enumerate(result.cold_start):
        for k, start in enumerate(variant.starts, 1):
            previous, parts = 0.0, []
            for key, label, color in PHASES:
                value = start.get(key)
                if value is None:
                    continue
                parts.append({"name": label, "value": max(0.0, value - previous), "color": color})
                previous = value
            starts.append({"group": variant.name, "name": f"start {k}", "short": f"{k}", "parts": parts})
            first.append({"name": f"{variant.name}, start {k}", "color": colors[i % len(colors)],
                          "dash": "" if i == 0 else "5 3",
                          "points": [[n + 1, v] for n, v in enumerate(start.get("first_requests_ms", []))]})
    groups = {}
    for bar in starts:
        groups.setdefault(bar["group"], []).append(bar)
    steady = [{"y": v.median["steady_p50_ms"], "label": f"steady p50, {v.name}"}
              for v in result.cold_start if v.median.get("steady_p50_ms") is not None]
    memory = [{"label": v.name, "bars": [
        {"name": "at AVAILABLE", "short": _value(v.median.get("memory_available_mb"), 0),
         "parts": [{"name": "at AVAILABLE", "value": v.median.get("memory_available_mb"), "color": "#74c476"}]},
        {"name": "first requests' peak", "short": _value(v.median.get("memory_peak_mb"), 0),
         "parts": [{"name": "first requests' peak", "value": v.median.get("memory_peak_mb"), "color": "#238b45"}]}]}
        for v in result.cold_start if v.median.get("memory_peak_mb") is not None]
    return {"colors": {}, "coldstart": {"groups": [{"label": g, "bars": b} for g, b in groups.items()],
                                        "first": first, "steady": steady, "memory": memory}}


def html_page(result: LifecycleResult) -> str:
    names = [v.name for v in result.cold_start]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{escape(label)}</td>"
        + "".join(f"<td>{_value(v.median.get(key), digits)}</td>" for v in result.cold_start) + "</tr>"
        for label, key, digits in ROWS)
    thresholds = "".join(
        f"<li>{'passed' if t['passed'] else 'FAILED'}: {escape(t['threshold'])} (measured "
        f"{_value(t['value'], 3)})</li>" for t in result.thresholds)
    body = (f"<p>{escape(result.warmup.get('text', ''))}</p>"
            f"<h2>Cold start: the median of {result.settings.get('repeats')} starts</h2>"
            f"<table><tr><th></th>{head}</tr>{rows}</table>"
            + (f"<h2>Thresholds</h2><ul>{thresholds}</ul>" if thresholds else "")
            + chart_slot("chart-coldstart", "each start from the moment the server was started: ports open, the "
                         "model AVAILABLE (GetModelStatus), the first correct answer")
            + chart_slot("chart-first", f"the first {result.settings.get('first_requests')} requests after the model "
                         "was AVAILABLE, one at a time; dashed lines: the steady p50")
            + chart_slot("chart-memory", "the server's memory (embedded: the process's resident set; docker: the "
                         "container's, as the engine reports it)")
            + f"<p class='note'>served by: {escape(str(result.provenance.get('server', '')))} "
              f"({escape(result.backend)}), {escape(str(result.provenance.get('image', '')))}; "
              f"gRPC {escape(str(result.settings.get('payload')))}</p>")
    return shell(f"lifecycle: {result.model}", f"lifecycle: {result.model}", body, headline=result.headline,
                 data=json.dumps(standard(chart_data(result)), allow_nan=False))


def write(result: LifecycleResult, run_dir: Path) -> None:
    save_atomically(run_dir / "lifecycle.json", result.to_json().encode())
    (run_dir / "lifecycle.html").write_text(html_page(result))


def terminal(result: LifecycleResult) -> str:
    """The cold start's medians, a column per variant, then the warmup verdict and thresholds."""
    names = [v.name for v in result.cold_start]
    lines = ["", f"{'cold start (median)':36}" + "".join(f"{n:>24}" for n in names)]
    for label, key, digits in ROWS:
        lines.append(f"{label:36}" + "".join(f"{_value(v.median.get(key), digits):>24}" for v in result.cold_start))
    lines.append(f"warmup: {result.warmup.get('text', '')}")
    for t in result.thresholds:
        lines.append(f"threshold {'passed' if t['passed'] else 'FAILED'}: {t['threshold']} "
                     f"(measured {_value(t['value'], 3)})")
    lines.append(result.headline)
    return "\n".join(lines)
