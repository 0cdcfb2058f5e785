"""What `make lifecycle` writes: lifecycle.json and lifecycle.html (the cold start's phases per start and its first
requests against their index; latency against time around a version swap, per model, with its markers; memory and
the SLO percentile against the copies served), the headline and the terminal table."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Optional

from loadtests.drive.files import save_atomically
from loadtests.measure.swap import AS_SERVED
from loadtests.report import chart_slot, shell
from spec.results import LifecycleResult, standard

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
PHASES = (("ports_open_s", "to both ports open", "#9ecae1"), ("available_s", "to AVAILABLE", "#3182bd"),
          ("first_answer_s", "to the first correct answer", "#08519c"))
ROWS = (("ports open (s)", "ports_open_s", 2), ("AVAILABLE (s)", "available_s", 2),
        ("first correct answer (s)", "first_answer_s", 2), ("SavedModel load (ms, server)", "load_ms", 0),
        ("warmup (ms, server)", "warmup_ms", 0), ("first request (ms)", "first_request_ms", 1),
        ("p50 of the first requests (ms)", "first_p50_ms", 2), ("steady p50 (ms)", "steady_p50_ms", 2),
        ("slow first requests", "slow_requests", 0), ("time in them (ms)", "slow_ms", 0),
        ("memory at AVAILABLE (MiB)", "memory_available_mb", 0),
        ("memory, first requests' peak (MiB)", "memory_peak_mb", 0))
MARKERS = (("copy", "copy started"), ("renamed", "renamed into the base path"), ("available", "new version AVAILABLE"),
           ("old_end", "old version END"), ("removed", "old version's folder removed"))


def _value(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cold_start_charts(result: LifecycleResult) -> dict:
    starts, first = {}, []
    for i, variant in enumerate(result.cold_start):
        for k, start in enumerate(variant.starts, 1):
            previous, parts = 0.0, []
            for key, label, color in PHASES:
                if start.get(key) is not None:
                    parts.append({"name": label, "value": max(0.0, start[key] - previous), "color": color})
                    previous = start[key]
            starts.setdefault(variant.name, []).append({"name": f"start {k}", "short": f"{k}", "parts": parts})
            first.append({"name": f"{variant.name}, start {k}", "color": COLORS[i % len(COLORS)],
                          "dash": "" if i == 0 else "5 3",
                          "points": [[n + 1, v] for n, v in enumerate(start.get("first_requests_ms", []))]})
    steady = [{"y": v.median["steady_p50_ms"], "label": f"steady p50, {v.name}"}
              for v in result.cold_start if v.median.get("steady_p50_ms") is not None]
    memory = [{"label": v.name, "bars": [
        {"name": label, "short": _value(v.median.get(key), 0),
         "parts": [{"name": label, "value": v.median.get(key), "color": color}]}
        for key, label, color in (("memory_available_mb", "at AVAILABLE", "#74c476"),
                                  ("memory_peak_mb", "first requests' peak", "#238b45"))]}
        for v in result.cold_start if v.median.get("memory_peak_mb") is not None]
    return {"groups": [{"label": g, "bars": b} for g, b in starts.items()], "first": first, "steady": steady,
            "memory": memory}


def _swap_charts(swap: dict) -> dict:
    bucket = swap["bucket_s"]
    series = []
    for i, (model, entry) in enumerate(swap["models"].items()):
        color = COLORS[i % len(COLORS)]
        points = [b for b in entry["buckets"] if b["p99_ms"] is not None]
        series.append({"name": f"{model} p99", "color": color, "r": 2.5,
                       "points": [[b["t"] + bucket / 2, b["p99_ms"], f"{b['requests']} requests, {b['failures']} "
                                   f"failed, versions {b['versions']}"] for b in points]})
        series.append({"name": f"{model} p50", "color": color, "dash": "4 2", "marker": False,
                       "points": [[b["t"] + bucket / 2, b["p50_ms"]] for b in points]})
    markers = [{"x": swap["markers"][key], "label": label, "color": "#555"} for key, label in MARKERS
               if swap["markers"].get(key) is not None]
    swapped = swapped_model(swap)
    share = [[b["t"] + bucket / 2, b["versions"].get(str(swap["new_version"]), 0) / max(1, sum(b["versions"].values()))]
             for b in swapped["buckets"] if b["versions"]]
    compared = []
    if swap.get("compared"):
        for i, run in enumerate(_settings(swap)):
            mine, copy_at = swapped_model(run), run["markers"]["copy"]
            points = [[b["t"] + bucket / 2 - copy_at, b["p99_ms"], f"{b['requests']} requests, {b['failures']} failed"]
                      for b in mine["buckets"] if b["p99_ms"] is not None]
            compared.append({"name": run.get("setting", AS_SERVED), "color": COLORS[i % len(COLORS)], "r": 2.5,
                             "points": points})
    return {"series": series, "markers": markers, "share": share, "compared": compared}


def swapped_model(swap: dict) -> dict:
    """The swapped model's entry of a swap (its models are listed swapped one first)."""
    return next(iter(swap["models"].values()))


def _settings(swap: dict) -> list[dict]:
    """The swap with the spec's own settings, then each compared setting's."""
    return [swap, *swap.get("compared", ())]


COMPARE_HEAD = ["setting", "copy to new answer (s)", "new version load (ms)", "its warmup (ms)", "peak p99 (ms)",
                "spike (ms)", "failures", "neighbours' peak p99 (ms)"]


def _compare_rows(swap: dict) -> list[list[str]]:
    rows = []
    for run in _settings(swap):
        swapped, *others = run["models"].values()
        server = run["new_version_server"]
        warmup = "none" if server.get("warmup_ms") is None and not server.get("metrics_error") else \
            _value(server.get("warmup_ms"), 0)
        peaks = [m["peak_p99_ms"] for m in others if m["peak_p99_ms"] is not None]
        rows.append([run.get("setting", AS_SERVED), _value(swapped.get("copy_to_new_answer_s"), 2),
                     _value(server.get("load_ms"), 0), warmup, _value(swapped["peak_p99_ms"], 1),
                     f"{swapped['spike_ms']:.0f}", str(sum(m["failures"] for m in run["models"].values())),
                     _value(max(peaks), 1) if peaks else "-"])
    return rows


def _density_charts(density: dict) -> dict:
    steps = density["steps"]
    memory = [{"name": name, "color": color, "points": [[s["models"], s[key]] for s in steps]}
              for key, name, color in (("memory_available_mb", "loaded (AVAILABLE, no warmup)", "#c7e9c0"),
                                       ("memory_warm_mb", "warmed up", "#74c476"),
                                       ("memory_peak_mb", "peak under load", "#238b45"))
              if any(s.get(key) is not None for s in steps)]
    latency = [{"name": f"p{density['percentile']:g}", "color": "#d62728",
                "points": [[s["models"], s["slo_percentile_ms"], f"{s['failures']} failed"] for s in steps]}]
    slo = steps[0].get("slo_ms") if steps else None
    return {"memory": memory, "latency": latency,
            "limit": [{"y": density["memory_limit_mb"], "label": "memory limit"}] if density["memory_limit_mb"] else [],
            "slo": [{"y": slo, "label": "SLO"}] if slo else []}


def chart_data(result: LifecycleResult) -> dict:
    """Each part's charts, for report.js."""
    data: dict = {"colors": {}}
    if result.cold_start:
        data["coldstart"] = _cold_start_charts(result)
    if result.swap:
        data["swap"] = _swap_charts(result.swap)
    if result.density:
        data["density"] = _density_charts(result.density)
    return data


def headline(result: LifecycleResult) -> str:
    """One sentence per part that ran."""
    sentences = []
    if result.cold_start:
        exported = result.cold_start[0].median
        text = (f"cold start ({result.backend}, {result.settings.get('repeats')} start(s) each): AVAILABLE after "
                f"{_value(exported['available_s'], 2)} s, first correct answer after "
                f"{_value(exported['first_answer_s'], 2)} s; first request {_value(exported['first_request_ms'], 1)} "
                f"ms against a steady p50 of {_value(exported['steady_p50_ms'], 1)} ms, "
                f"{_value(exported['slow_requests'], 0)} slow first requests")
        if len(result.cold_start) > 1:
            m = result.cold_start[1].median
            text += (f"; without the warmup records: AVAILABLE after {_value(m['available_s'], 2)} s, first "
                     f"request {_value(m['first_request_ms'], 1)} ms, {_value(m['slow_requests'], 0)} slow")
        if exported.get("memory_peak_mb") is not None:
            text += f"; memory {exported['memory_peak_mb']:.0f} MiB at the first requests' peak"
        sentences.append(text + f". Warmup: {result.warmup.get('short')}")
    if result.swap:
        sentences.append(swap_sentence(result.swap))
    if result.density:
        sentences.append(density_sentence(result.density))
    return ". ".join(s.rstrip(".") for s in sentences) + "."


def swap_sentence(swap: dict) -> str:
    models = list(swap["models"].values())
    swapped = models[0]
    if swapped.get("copy_to_new_answer_s") is None:
        text = f"swap: version {swap['new_version']} never answered"
    else:
        text = f"swap: version {swap['new_version']} answered {swapped['copy_to_new_answer_s']:.2f} s after the copy"
    for m in models:
        who = m["model"] if m is swapped else f"neighbour {m['model']}"
        if m["spike_buckets"]:
            text += (f"; p99 of {who} rose from {_value(m['baseline_p99_ms'], 1)} ms to "
                     f"{_value(m['peak_p99_ms'], 1)} ms for {m['spike_ms'] / 1000:.2f} s")
        else:
            text += f"; {who} unaffected (p99 {_value(m['baseline_p99_ms'], 1)} ms, peak {_value(m['peak_p99_ms'], 1)})"
    failures = sum(m["failures"] for m in models)
    text += f"; {failures} failure{'s' if failures != 1 else ''}" + ("" if not failures else " (0 expected)")
    if swapped.get("old_after_switch"):
        text += f"; {swapped['old_after_switch']} requests sent after the switch were answered by the old version"
    text += f"; {swap['late_problem']}" if swap.get("late_problem") else ""
    for run in swap.get("compared", ()):
        mine = swapped_model(run)
        lost = sum(m["failures"] for m in run["models"].values())
        text += (f"; with {run['setting']}: answered {_value(mine.get('copy_to_new_answer_s'), 2)} s after the copy, "
                 f"peak p99 {_value(mine['peak_p99_ms'], 1)} ms, {lost} failure{'s' if lost != 1 else ''}")
    return text


def density_sentence(density: dict) -> str:
    steps = density["steps"]
    text = f"density: {density['fits']} of {len(steps)} cop{'y' if len(steps) == 1 else 'ies'} tried fit"
    if density.get("limited_by"):
        text += f" (limited by {density['limited_by']})"
    per = density.get("per_copy_peak_mb")
    if per is not None:
        loaded, warm = density.get("per_copy_available_mb"), density.get("per_copy_warm_mb")
        split = f" ({loaded:.0f} MiB once loaded, {warm:.0f} MiB once warmed up)" if None not in (loaded, warm) else ""
        text += (f"; each copy adds {per:.0f} MiB under load{split} against {density['saved_model_mb']:.1f} MiB on "
                 "disk")
    return text


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _swap_rows(swap: dict) -> list[list[str]]:
    return [[m["model"], str(m["requests"]), str(m["failures"]), str(m["late"]), _value(m["baseline_p99_ms"], 1),
             _value(m["peak_p99_ms"], 1), f"{m['spike_ms']:.0f}", ", ".join(map(str, m["versions"])),
             _value(m.get("copy_to_new_answer_s"), 2) if "copy_to_new_answer_s" in m else "-"]
            for m in swap["models"].values()]


SWAP_HEAD = ["model", "requests", "failures", "late starts", "baseline p99 (ms)", "peak p99 (ms)", "spike (ms)",
             "versions answering", "copy to new answer (s)"]
DENSITY_HEAD = ["copies", "ready (s)", "memory loaded (MiB)", "warmed up (MiB)", "under load (MiB)", "p50 (ms)",
                "SLO percentile (ms)", "failures", "SLO met"]


def _density_rows(density: dict) -> list[list[str]]:
    return [[str(s["models"]), _value(s["ready_s"], 1), _value(s["memory_available_mb"], 0),
             _value(s.get("memory_warm_mb"), 0), _value(s["memory_peak_mb"], 0), _value(s["p50_ms"], 2),
             _value(s["slo_percentile_ms"], 2), str(s["failures"]), {True: "yes", False: "no", None: "-"}[s["slo_met"]]]
            for s in density["steps"]]


def html_page(result: LifecycleResult) -> str:
    body = ""
    if result.cold_start:
        body += (f"<h2>Cold start: the median of {result.settings.get('repeats')} starts</h2>"
                 f"<p>{escape(result.warmup.get('text', ''))}</p>"
                 + _table([""] + [v.name for v in result.cold_start],
                          [[label] + [_value(v.median.get(key), digits) for v in result.cold_start]
                           for label, key, digits in ROWS])
                 + chart_slot("chart-coldstart", "each start from the moment the server was started: ports open, "
                              "the model AVAILABLE (GetModelStatus), the first correct answer")
                 + chart_slot("chart-first", f"the first {result.settings.get('first_requests')} requests after the "
                              "model was AVAILABLE, one at a time; dashed lines: the steady p50")
                 + chart_slot("chart-memory", "the server's memory (embedded: the process's resident set; docker: "
                              "the container's, as the engine reports it)"))
    if result.swap:
        swap = result.swap
        body += (f"<h2>Version swap under load</h2><p>{escape(swap_sentence(swap))}</p>"
                 f"<p>{swap['rate_per_model']:.1f} req/s on each model ({escape(swap['rate_source'])}), open loop; "
                 f"latency from each request's due time, in buckets of {swap['bucket_s'] * 1000:.0f} ms.</p>"
                 + _table(SWAP_HEAD, _swap_rows(swap))
                 + chart_slot("chart-swap", "p99 (points) and p50 (dashed) of each model per bucket; grey lines: "
                              "copy, rename, new version AVAILABLE, old version END, old folder removed")
                 + chart_slot("chart-swap-share", "the share of each bucket's answers that came from the new version"))
        if swap.get("compared"):
            body += ("<h3>The swap with other settings, each on a fresh server</h3>"
                     + _table(COMPARE_HEAD, _compare_rows(swap))
                     + chart_slot("chart-swap-compare", "p99 of the swapped model per bucket, from the copy on, for "
                                  "each setting"))
    if result.density:
        density = result.density
        body += (f"<h2>Memory and density</h2><p>{escape(density_sentence(density))}</p>"
                 + _table(DENSITY_HEAD, _density_rows(density))
                 + chart_slot("chart-density-memory", "the server's memory against the copies it serves")
                 + chart_slot("chart-density-latency", "the SLO percentile at a fixed rate spread over the copies"))
    thresholds = "".join(
        f"<li>{ {True: 'passed', False: 'FAILED', None: 'not evaluated'}[t['passed']] }: {escape(t['threshold'])} "
        f"(measured {_value(t['value'], 3)}){escape(' ' + t['note'] if t.get('note') else '')}</li>"
        for t in result.thresholds)
    body += (f"<h2>Thresholds</h2><ul>{thresholds}</ul>" if thresholds else "") + (
        f"<p class='note'>served by: {escape(str(result.provenance.get('server', '')))} ({escape(result.backend)}), "
        f"{escape(str(result.provenance.get('image', '')))}; gRPC {escape(str(result.settings.get('payload')))}</p>")
    return shell(f"lifecycle: {result.model}", f"lifecycle: {result.model}", body, headline=result.headline,
                 data=json.dumps(standard(chart_data(result)), allow_nan=False))


def write(result: LifecycleResult, run_dir: Path) -> None:
    save_atomically(run_dir / "lifecycle.json", result.to_json().encode())
    (run_dir / "lifecycle.html").write_text(html_page(result))


def terminal(result: LifecycleResult) -> str:
    """Each part's table, the warmup verdict, the thresholds and the headline."""
    lines = [""]
    if result.cold_start:
        lines.append(f"{'cold start (median)':36}" + "".join(f"{v.name:>24}" for v in result.cold_start))
        for label, key, digits in ROWS:
            lines.append(f"{label:36}" + "".join(f"{_value(v.median.get(key), digits):>24}"
                                                 for v in result.cold_start))
        lines.append(f"warmup: {result.warmup.get('text', '')}")
    for title, head, rows in ((("swap", SWAP_HEAD, _swap_rows(result.swap)),) if result.swap else ()) + (
            (("swap, compared settings", COMPARE_HEAD, _compare_rows(result.swap)),)
            if result.swap and result.swap.get("compared") else ()) + (
            (("density", DENSITY_HEAD, _density_rows(result.density)),) if result.density else ()):
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines += ["", title, "  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    for t in result.thresholds:
        lines.append(f"threshold {({True: 'passed', False: 'FAILED', None: 'not evaluated'})[t['passed']]}: "
                     f"{t['threshold']} (measured {_value(t['value'], 3)})")
    lines.append(result.headline)
    return "\n".join(lines)
