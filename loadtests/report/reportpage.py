"""report.html: one self-contained, interactive page (inline SVG charts drawn by inline script, no network).

The page embeds its data as JSON: each series' curve over the levels, every run's latency over time and its
distribution (from the run's samples), REST against gRPC at each level, per-image latency, the breakdown and the
capacity probes. The tables (runs, breakdown, floor, correctness, provenance) are rendered here in Python.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from loadtests import report
from loadtests.analyze.figures import folded
from loadtests.report import plots, reporttables
from spec.results import BenchSummary, standard

TIMELINE_BUCKETS = 60
CDF_POINTS = [q / 2 for q in range(0, 199)] + [99.5, 99.9, 100.0]
COLORS = {"rest": ("#1f77b4", "#2ca02c", "#17becf", "#9467bd"), "grpc": ("#ff7f0e", "#d62728", "#8c564b", "#e377c2")}


def _finite(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _samples(run: dict, run_dir: Path) -> Optional[dict]:
    """Latency over everything measured (buckets: p50, p99, count, failures; the sub-windows before the span the
    figures come from included), the span used, and the CDF of the span, from the run's samples."""
    path = run_dir / "samples" / str(run.get("samples_file", ""))
    if not run.get("samples_file") or not path.is_file():
        return None
    with np.load(path) as data:
        t, latency, ok, due = data["t"], data["latency_ms"], data["ok"], data["due"]
        meta = json.loads(data["meta"].tobytes())
    window = float(meta.get("window_s") or 0.0)
    if window <= 0:
        return None
    settled = meta.get("settled") or {}
    before = float(settled["before_s"] if "before_s" in settled  # measured before the span
                   else settled.get("first_window", 0) * settled.get("sub_window_s", 0.0))
    key = (due if run["mode"] == "open" else t) + before  # from the moment measuring began
    total = before + window
    measured = (key >= 0) & (key < total)
    bucket_s = total / TIMELINE_BUCKETS
    index = np.minimum((key[measured] / bucket_s).astype(int), TIMELINE_BUCKETS - 1)
    lat, good = latency[measured], ok[measured]
    timeline = []
    for b in range(TIMELINE_BUCKETS):
        mine = lat[(index == b) & good]
        failed = int(((index == b) & ~good).sum())
        if mine.size or failed:
            timeline.append([round((b + 0.5) * bucket_s, 3),
                             float(np.percentile(mine, 50)) if mine.size else None,
                             float(np.percentile(mine, 99)) if mine.size else None, int(mine.size), failed])
    in_span = (key >= before) & (key < total)
    good_lat = latency[in_span & ok]
    cdf = ([[float(v), q / 100.0] for v, q in zip(np.percentile(good_lat, CDF_POINTS), CDF_POINTS)]
           if good_lat.size else [])
    return {"timeline": timeline, "cdf": cdf, "bucket_s": bucket_s, "span": [round(before, 3), round(total, 3)],
            "extended": bool(run.get("extended_s"))}


def _level_label(level: float, mode: str) -> str:
    return f"{level:g} req/s" if mode == "open" else f"{level:g} user{'' if level == 1 else 's'}"


def headline(summary: dict) -> str:
    """What the run found, in one sentence: the protocols against each other, the capacity, validity, thresholds."""
    runs = folded(summary["runs"])
    mode = summary.get("mode", "closed")
    invalid = [r for r in summary["runs"] if not r["valid"]]
    tail = f"{len(invalid)} of {len(summary['runs'])} runs invalid" if invalid else "no run invalid"
    if summary.get("thresholds_passed") is not None:
        broken = sum(v["passed"] is False for v in summary["thresholds"])
        tail += "; thresholds passed" if not broken else f"; {broken} threshold check(s) broken"
    if summary.get("capacity"):
        best = sorted(summary["capacity"], key=lambda r: -r["capacity_rps"])
        slo = summary["settings"]["slo"]
        parts = ", ".join(f"{report.run_name(r)} {r['capacity_rps']:.1f} req/s" for r in best)
        return f"capacity at p{slo['percentile']:g} <= {slo['latency_ms']:g} ms: {parts}; {tail}"
    if not runs:
        return "no run was measured"
    for rest_payload, grpc_wire in report.pairs(runs):
        if rest_payload is None or grpc_wire is None:
            continue
        rest = {r["level"]: r for r in report.series(runs, "rest", rest_payload)}
        grpc = {r["level"]: r for r in report.series(runs, "grpc", grpc_wire)}
        levels = sorted(set(rest) & set(grpc))
        ratios = [grpc[lv]["p50_ms"] / rest[lv]["p50_ms"] for lv in levels
                  if _finite(rest[lv]["p50_ms"]) and _finite(grpc[lv]["p50_ms"]) and rest[lv]["p50_ms"] > 0]
        if not ratios:
            continue
        ratio = math.exp(sum(math.log(x) for x in ratios) / len(ratios))  # geometric mean over the levels
        span = (f"{levels[0]:g}-{levels[-1]:g}" if len(levels) > 1 else f"{levels[0]:g}") + \
            (" req/s" if mode == "open" else " users" if levels[-1] != 1 else " user")
        if abs(ratio - 1) < 0.005:
            return f"gRPC {grpc_wire} and REST {rest_payload} are level at p50 over {span}; {tail}"
        faster, slower = (f"gRPC {grpc_wire}", f"REST {rest_payload}") if ratio < 1 else \
            (f"REST {rest_payload}", f"gRPC {grpc_wire}")
        change = (1 - ratio) if ratio < 1 else (1 - 1 / ratio)
        return f"{faster} is {change:.0%} faster than {slower} at p50 over {span}; {tail}"
    lowest = min(runs, key=lambda r: r["level"])
    peak = max(runs, key=lambda r: r["rps"])
    return (f"{report.run_name(lowest)}: p50 {report.fmt(lowest['p50_ms'])} ms at {_level_label(lowest['level'], mode)}, "
            f"peak {peak['rps']:.1f} req/s ({report.run_name(peak)}); {tail}")


def page_data(summary: dict, run_dir: Path) -> dict:
    """The JSON the page's script draws from."""
    mode = summary.get("mode", "closed")
    capacity = summary.get("capacity")
    runs = folded(summary["runs"]) if capacity is None else summary["runs"]
    names = list(dict.fromkeys(report.run_name(r) for r in summary["runs"]))
    colors, used = {}, {"rest": 0, "grpc": 0}
    for name in names:
        protocol = "rest" if name.startswith("REST") else "grpc"
        colors[name] = COLORS[protocol][used[protocol] % 4]
        used[protocol] += 1
    curves = []
    if capacity is None:
        for name in names:
            mine = sorted((r for r in runs if report.run_name(r) == name), key=lambda r: r["level"])
            curves.append({"name": name, "points": [
                {"level": r["level"], "p50": _finite(r["p50_ms"]), "p99": _finite(r["p99_ms"]), "rps": _finite(r["rps"]),
                 "valid": r["valid"], "note": (f"median of {r['repeats']} repeats; " if r.get("repeats", 1) > 1 else "")
                 + ("valid" if r["valid"] else "INVALID: " + html.escape("; ".join(r["invalid_reasons"])[:300]))}
                for r in mine]})
    measured = []
    for r in summary["runs"]:
        drawn = _samples(r, run_dir)
        if drawn is None:
            continue
        repeat = r.get("repeat", 1)
        label = f"{report.run_name(r)} at {_level_label(r['level'], mode)}" + (f", repeat {repeat}" if repeat > 1 else "") + \
            (f" ({r['tag']})" if r.get("tag") else "")
        measured.append({"name": report.run_name(r), "level": r["level"], "repeat": repeat, "label": label, **drawn})
    pairs = []
    if capacity is None:
        for level in sorted({r["level"] for r in runs}):
            bars = [{"name": report.run_name(r), "short": "REST" if r["protocol"] == "rest" else "gRPC",
                     "p50": _finite(r["p50_ms"])} for r in runs if r["level"] == level]
            pairs.append({"level": _level_label(level, mode), "bars": bars})
    lowest = min((r["level"] for r in runs), default=None)
    images = [{"name": report.run_name(r), "points": [[b["request_bytes"] / 1024, b["p50_ms"],
                                             f"image {b['image']} ({b['width']}x{b['height']}), {b['requests']} requests"]
                                            for b in r.get("by_image") or []]}
              for r in runs if r["level"] == lowest and r.get("by_image")]
    breakdown = []
    if capacity is None and any(r.get("breakdown") for r in runs):
        for level in sorted({r["level"] for r in runs}):
            bars = [{"name": report.run_name(r), "short": "REST" if r["protocol"] == "rest" else "gRPC",
                     "parts": [{"name": label, "value": _finite((r.get("breakdown") or {}).get(key)),
                                "color": {"tab:green": "#2ca02c", "tab:purple": "#9467bd", "tab:olive": "#bcbd22",
                                          "tab:gray": "#7f7f7f"}[colour]} for key, label, colour in report.PARTS]}
                    for r in runs if r["level"] == level and r.get("breakdown")]
            breakdown.append({"level": _level_label(level, mode), "bars": bars})
    data = {"mode": mode, "levelName": "offered load (req/s)" if mode == "open" else "concurrent users",
            "colors": colors, "curves": curves, "runs": measured, "pairs": pairs, "images": images,
            "imagesTitle": f"per-image p50 at {_level_label(lowest, mode)}" if lowest is not None else "",
            "levels": sorted({m["level"] for m in measured}), "breakdown": breakdown}
    if capacity:
        slo = summary["settings"]["slo"]
        key = f"p{slo['percentile']:g}_ms"
        data["capacity"] = {"slo_ms": slo["latency_ms"], "slo_text": f"SLO p{slo['percentile']:g} {slo['latency_ms']:g} ms",
                            "ylabel": f"p{slo['percentile']:g} latency from scheduled send (ms)", "results": [
                                {"name": report.run_name(c), "capacity": c["capacity_rps"],
                                 "probes": [[p["offered_rps"], _finite(p.get(key)), "pass" if p["meets_slo"] else "fail",
                                             p["meets_slo"]] for p in sorted(c["probes"], key=lambda p: p["offered_rps"])]}
                                for c in capacity]}
    return standard(data)


def page(summary: dict, run_dir: Path, pngs: Sequence[str] = ()) -> str:
    """The whole report.html; pngs: the static plots written beside it, linked for slides and tickets."""
    esc = html.escape
    data = page_data(summary, run_dir)
    capacity = summary.get("capacity")
    charts = []
    if capacity is None:
        charts.append("<h2>Latency and throughput by level</h2><div class='row'>"
                      + report.chart_slot("chart-latency", "hollow points: an invalid run") + report.chart_slot("chart-throughput") + "</div>")
        charts.append("<h2>REST against gRPC</h2>" + report.chart_slot("chart-pairs", "p50 of each protocol and payload at every "
                                                              "level; hover for values"))
    else:
        charts.append("<h2>Capacity curves</h2>" + report.chart_slot("chart-capacity", "every probe of the search; the dotted "
                                                          "lines are the capacities found"))
    if data["runs"]:
        charts.append("<h2>Latency over time within each run</h2>"
                      + report.chart_slot("chart-timeline", "p50 and p99 per slice of everything measured (warm-up excluded): "
                               "drift, stalls and warm-up left-overs show here; a run that had not settled by its "
                               "duration went on measuring, and the dotted lines mark the span its figures come from",
                               picker="pick-run"))
        charts.append("<h2>Latency distribution</h2>"
                      + report.chart_slot("chart-cdf", "every run at the level chosen (dashed: later repeats)", picker="pick-level")
                      .replace("<label>run", "<label>level"))
    if data["images"]:
        charts.append("<h2>Per-image latency</h2>" + report.chart_slot("chart-images", "each benchmark image: its request size "
                                                             "against its p50"))
    if data["breakdown"]:
        charts.append("<h2>Where the time goes (chart)</h2>" + report.chart_slot("chart-breakdown", "stacked means from the "
                                                                       "client's send; see the table below"))
    if pngs:
        charts.append("<p class=files>Static copies (PNG) beside this page: "
                      + ", ".join(f"<a href='{esc(name)}'>{esc(name)}</a>" for name in pngs) + ".</p>")
    body = reporttables.html_body(summary)
    return report.shell(f"{summary['model']}: {headline(summary)}",
                        f"{summary['model']}: REST vs gRPC on {report.served_by(summary['provenance'])}",
                        body["verdict"] + "".join(charts) + body["tables"], headline=headline(summary),
                        data=json.dumps(data, allow_nan=False))


def write(summary: BenchSummary, out_dir: Path) -> BenchSummary:
    """summary.json (with its headline), PNG copies of the main plots and the interactive report.html; returns
    the summary as written (with its headline)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    typed = dataclasses.replace(summary, headline=headline(summary.to_dict()))
    summary = typed.to_dict()
    (out_dir / "summary.json").write_text(typed.to_json())
    runs = folded(summary["runs"]) if summary.get("capacity") is None else summary["runs"]
    pngs = []
    if runs:
        pngs += plots.plot(runs, out_dir)
        pngs += filter(None, [plots.plot_breakdown(runs, out_dir)])
    if summary.get("capacity"):
        pngs.append(plots.plot_capacity(summary["capacity"], summary["settings"]["slo"], out_dir))
    (out_dir / "report.html").write_text(page(summary, out_dir, pngs))
    return typed
