"""What `make tune` writes: tune.json (baseline, trials, best, pareto), tune.html with the Pareto plot and the
ranked table, and the terminal lines. Everything here is read off the recorded trials; nothing is measured."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Optional, Sequence

from deploy.serving_config import ServerLayout, batching_text, server_flags
from loadtests.drive.files import save_atomically
from loadtests.measure import tunespace
from loadtests.report import chart_slot, shell
from loadtests.report.plots import pareto_points, plot_pareto
from spec.results import TuneResult
from spec.tuning import SERVING_KNOBS, apply_config


def best_trial(trials: Sequence[dict], min_gain: float) -> Optional[dict]:
    """The recommendation: the highest capacity among the measured trials, unless it is within min_gain of the
    baseline's (trial 1), which then stays the recommendation (a gain inside the noise is not worth a change)."""
    measured = [t for t in trials if tunespace.score(t) is not None]
    if not measured:
        return None
    top = max(measured, key=lambda t: (tunespace.score(t), -t["index"]))
    baseline = trials[0] if trials and tunespace.score(trials[0]) is not None else None
    if baseline is not None and top is not baseline and not tunespace.better(top, baseline, min_gain):
        return baseline
    return top


def _cell_figure(trial: dict, field: str) -> Optional[float]:
    """A breakdown figure of the trial's first cell (the one the batching explanation speaks of)."""
    parts = next(iter(trial.get("breakdown", {}).values()), {}) or {}
    return parts.get(field)


def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def batching_verdict(trials: Sequence[dict], best: Optional[dict], baseline: Optional[dict], min_gain: float) -> dict:
    """Whether batching is recommended, and why, from the breakdown of the trials with and without it."""
    on = [t for t in trials if t["config"].get("batching") and t["status"] in ("measured", "limited", "pruned")]
    off = [t for t in trials if not t["config"].get("batching") and tunespace.score(t) is not None]
    if not on:
        return {"recommended": bool(best and best["config"].get("batching")),
                "why": "no batching configuration was measured"}
    best_on = max(on, key=lambda t: tunespace.score(t) or 0.0)
    reference = max(off, key=lambda t: tunespace.score(t)) if off else baseline
    recommended = bool(best and best["config"].get("batching"))
    queue = _cell_figure(best_on, "queue_ms")
    batch = _cell_figure(best_on, "batch_size_mean")
    # the cost of a request is the server's CPU time per answered request: under load, unbatched requests share
    # the cores, so their wall-clock model time counts the others' work too; the model time is the fallback
    field, unit, what = "server_core_ms_per_request", "core-ms", "server CPU per request"
    if _cell_figure(best_on, field) is None or (reference and _cell_figure(reference, field) is None):
        field, unit, what = "model_ms_per_request", "ms", "model time per request"
    with_batching = _cell_figure(best_on, field)
    without = _cell_figure(reference, field) if reference else None
    gain = (without / with_batching) if without and with_batching else None
    shown = lambda value: "n/a" if value is None else f"{value:.1f} {unit}"
    runtime = (f"{what} {shown(without)} without batching against {shown(with_batching)} with it"
               + ((f" ({gain:.2f}x less)" if gain >= 1.0 else f" ({1.0 / gain:.2f}x more)") if gain else "")
               + (f", in batches of {batch:.1f} on average" if batch else ""))
    mine = tunespace.score(best_on)
    theirs = tunespace.score(reference) if reference else None
    capacity = f"{mine:.1f} req/s against {theirs:.1f} ({mine / theirs:.2f}x)" if mine and theirs else None
    reached = (f"reached {capacity}" if capacity else
               f"was pruned: it missed the SLO at {_pruned_rate(best_on)}" + (
                   f", where {theirs:.1f} req/s met it without batching" if theirs else "")
               if best_on["status"] == "pruned" else "has no capacity to compare")
    if recommended:
        why = (f"batching pays: {runtime}, for {_ms(queue)} of waiting in the batching queue; capacity "
               f"{capacity or 'not compared'}")
    else:
        verdict = ("queue time without a runtime gain" if not gain or gain < 1.0 + min_gain else
                   "a runtime gain that the queue time and the batch timeout eat up")
        top = tunespace.ceiling(reference) if reference else None
        if reference and reference["status"] == "limited" and mine and theirs and mine > theirs * (1.0 + min_gain):
            verdict += (f"; and {theirs:.1f} req/s without batching is a lower bound (the load generator was the "
                        "limit" + (f", below {top:.1f} req/s" if top and math.isfinite(top) else "")
                        + "), so a higher capacity with batching that does not cost less per request is not a gain "
                        "shown (add WORKERS)")
        why = (f"batching is not recommended: the best batching trial (#{best_on['index']}: {best_on['label']}) "
               f"{reached}; its requests waited {_ms(queue)} in the batching queue, {runtime}: {verdict}")
    return {"recommended": recommended, "why": why, "best_batching_trial": best_on["index"],
            "queue_ms": queue, "cost_measure": field, "cost_with": with_batching, "cost_without": without,
            "runtime_gain": gain}


def _pruned_rate(trial: dict) -> str:
    rates = list((trial.get("pruned_below_rps") or {}).values())
    return f"{rates[0]:.1f} req/s" if rates and rates[0] else "its first probe"


def pareto(trials: Sequence[dict]) -> list[dict]:
    """Per cell, the passing probes no other passing probe beats on both throughput and the SLO percentile."""
    points = [dict(point, trial=t["index"], label=t["label"]) for t in trials for point in t.get("pareto_points", [])
              if point.get("slo_ms") is not None]
    front = []
    for p in points:
        same = [q for q in points if (q["protocol"], q["payload"]) == (p["protocol"], p["payload"])]
        if not any(q["achieved_rps"] >= p["achieved_rps"] and q["slo_ms"] <= p["slo_ms"]
                   and (q["achieved_rps"] > p["achieved_rps"] or q["slo_ms"] < p["slo_ms"]) for q in same):
            front.append(p)
    return sorted(front, key=lambda p: (p["protocol"], p["payload"], p["achieved_rps"]))


def _fragment(config: dict, serving) -> str:
    """A serving: block to paste into the spec (the batching section in full when batching is on)."""
    import yaml

    tuned = apply_config(serving, config)
    block: dict = {"batching": {"enabled": tuned.batching.enabled}}
    if tuned.batching.enabled:
        block["batching"].update({k: getattr(tuned.batching, k) for k in (
            "max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")})
        if tuned.batching.allowed_batch_sizes:
            block["batching"]["allowed_batch_sizes"] = list(tuned.batching.allowed_batch_sizes)
    block.update({k: getattr(tuned, k) for k in SERVING_KNOBS if getattr(tuned, k)})
    if config.get("image") and config["image"] != serving.image:
        block["image"] = config["image"]
    return yaml.safe_dump({"serving": block}, sort_keys=False)


def recommendation(trial: dict, baseline: dict, spec) -> dict:
    """tune.json's best: config, capacity, the flags and batching file a TF Serving container needs, a fragment."""

    tuned = spec.model_copy(update={"serving": apply_config(spec.serving, trial["config"])})
    gain = (trial["capacity_rps"] / baseline["capacity_rps"]) if baseline and baseline.get("capacity_rps") else None
    return {"trial": trial["index"], "label": trial["label"], "config": trial["config"],
            "capacity_rps": trial["capacity_rps"], "gain": gain, "valid": trial["valid"],
            "lower_bound": trial["status"] == "limited", "is_baseline": trial["index"] == 1,
            "flags": server_flags(tuned, ServerLayout.in_image(tuned), embedded=False, ports=(8500, 8501)),
            "batching_parameters": batching_text(tuned.serving.batching) if tuned.serving.batching.enabled else None,
            "spec_fragment": _fragment(trial["config"], spec.serving),
            "use": f"serving.tuned: latest in {spec.origin} (or paste spec_fragment into its serving section)"}


def headline(result: dict) -> str:
    """The one line: what the best configuration buys over the baseline at the SLO."""
    best, slo = result["best"], result["slo_text"]
    if best is None:
        return f"no configuration could be measured at {slo}"
    measured = sum(1 for t in result["trials"] if t["status"] in ("measured", "limited"))
    bound = " (a lower bound: the load generator was the limit)" if best["lower_bound"] else ""
    if best["is_baseline"]:
        return (f"the spec's configuration is the best found: {best['capacity_rps']:.1f} req/s at {slo}{bound}; no "
                f"other of the {measured} measured configurations showed a gain over it of more than "
                f"{result['min_gain']:.0%}")
    if not best["gain"]:
        return (f"{best['label']}: {best['capacity_rps']:.1f} req/s at {slo}, where the default met the SLO at no "
                f"rate{bound}")
    return f"{best['label']}: {best['gain']:.1f}x the default's capacity at {slo} ({best['capacity_rps']:.1f} req/s){bound}"


def assemble(state: dict, spec, space) -> TuneResult:
    """tune.json's content from the search state."""
    trials = state["trials"]
    baseline = trials[0] if trials else None
    best = best_trial(trials, state["min_gain"])
    result = {k: state[k] for k in ("model", "key", "report_dir", "complete", "slo", "slo_text", "strategy",
                                    "budget_s", "elapsed_s", "backend", "cells", "min_gain", "space",
                                    "answers")}
    result["stopped_by"] = state.get("stopped_by")
    result["baseline"] = ({"config": baseline["config"], "capacity_rps": baseline["capacity_rps"],
                           "trial": 1} if baseline else None)
    result["trials"] = trials
    result["coverage"] = {"trials": len(trials),
                          **{status: sum(t["status"] == status for t in trials)
                             for status in ("measured", "limited", "pruned", "failed")},
                          "grid_size": _grid_size(spec, state, space)}
    result["best"] = recommendation(best, baseline, spec) if best else None
    result["pareto"] = pareto(trials)
    result["batching"] = batching_verdict(trials, best, baseline, state["min_gain"])
    result["headline"] = headline(result)
    return TuneResult.made(result)


def _grid_size(spec, state, space) -> Optional[int]:
    trials = state["trials"]
    if not trials or not trials[0]["cells"]:
        return None
    return len(tunespace.sized(space, trials[0]["cells"], spec.benchmark.slo.latency_ms).grid())


def trial_line(trial: dict) -> str:
    """A trial's result in one line."""
    if trial["status"] == "failed":
        return f"FAILED: {trial['error'] or '; '.join(trial['invalid_reasons'])}"
    if trial["status"] == "pruned":
        return f"pruned: missed the SLO at its first probe ({_pruned_rate(trial)})"
    parts = next(iter(trial["breakdown"].values()), {})
    extra = (f", batches of {parts['batch_size_mean']:.1f}, queue {_ms(parts.get('queue_ms'))}"
             if parts.get("batch_size_mean") else "")
    return (f"capacity {trial['capacity_rps']:.1f} req/s (model {_ms(parts.get('model_ms_per_request'))} per "
            f"request{extra})" + ("" if trial["valid"] else f"; {'; '.join(trial['invalid_reasons'])}"))


def ranked(trials: Sequence[dict]) -> list[dict]:
    """Trials by capacity, highest first; pruned and failed ones last, in order."""
    return sorted(trials, key=lambda t: (-(tunespace.score(t) or -1.0), t["index"]))


def terminal(typed: TuneResult) -> str:
    """The terminal table: every trial, best first, then the recommendation and the batching verdict."""
    result = typed.to_dict()
    base = (result["baseline"] or {}).get("capacity_rps")
    cover = result["coverage"]
    lines = [f"tune at {result['slo_text']}: {cover['trials']} trials "
             f"({cover['measured'] + cover['limited']} measured"
             + (f", {cover['limited']} of them limited by the load generator" if cover["limited"] else "")
             + f", {cover['pruned']} pruned, {cover['failed']} failed)" + (", stopped by the budget" if result["stopped_by"] == "budget"
                                                         else ""),
             f"  {'#':>3} | {'capacity':>9} | {'x base':>6} | configuration"]
    for t in ranked(result["trials"]):
        score = tunespace.score(t)
        shown = f"{score:9.1f}" if score is not None else f"{t['status']:>9}"
        ratio = f"{score / base:6.2f}" if score is not None and base else f"{'':6}"
        lines.append(f"  {t['index']:>3} | {shown} | {ratio} | {t['label']}")
    lines += ["", result["headline"], result["batching"]["why"]]
    return "\n".join(lines)


def chart_data(result: dict) -> dict:
    """The Pareto chart for report.js: each trial's passing probes, and each cell's front as a step line."""
    points = pareto_points(result)
    fronts = []
    for protocol, wire in sorted({(p["protocol"], p["wire"]) for p in result["pareto"]}):
        front = sorted((p for p in result["pareto"] if (p["protocol"], p["wire"]) == (protocol, wire)),
                       key=lambda p: p["achieved_rps"])
        steps = []
        for here, after in zip(front, front[1:] + [None]):
            steps.append([here["achieved_rps"], here["slo_ms"]])
            if after is not None:  # the front holds its latency until the next point's throughput
                steps.append([after["achieved_rps"], here["slo_ms"]])
        fronts.append({"name": f"front: {protocol} {wire}", "points": steps})
    return {"pareto": {"ylabel": f"p{result['slo']['percentile']:g} from the scheduled send (ms)",
                       "slo_ms": result["slo"]["latency_ms"], "slo_text": result["slo_text"], "fronts": fronts,
                       "trials": [{"name": f"trial {index}",
                                   "points": [[p["achieved_rps"], p["slo_ms"], f"{p['protocol']} {p['wire']}, offered "
                                               f"{p['offered_rps']:.1f} req/s"] for p in points if p["trial"] == index]}
                                  for index in sorted({p["trial"] for p in points})]}}


def html_page(result: dict, plot: Optional[str]) -> str:
    e = html.escape
    base = (result["baseline"] or {}).get("capacity_rps")
    rows = []
    for t in ranked(result["trials"]):
        score = tunespace.score(t)
        parts = next(iter(t["breakdown"].values()), {}) if t["breakdown"] else {}
        cells = [str(t["index"]), e(t["label"]), t["status"], f"{score:.1f}" if score is not None else "-",
                 f"{score / base:.2f}x" if score is not None and base else "-",
                 _ms(parts.get("slo_ms")), _ms(parts.get("queue_ms")), _ms(parts.get("model_ms_per_request")),
                 f"{parts['batch_size_mean']:.1f}" if parts.get("batch_size_mean") else "-",
                 e("; ".join(t["invalid_reasons"])) or "valid",
                 f'<a href="trials/{t["index"]:02d}/report.html">report</a>']
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = ["#", "configuration", "status", "capacity (req/s)", "x baseline", f"p{result['slo']['percentile']:g} "
              "at capacity", "queue", "model per request", "batch", "validity", ""]
    best = result["best"]
    best_html = ("" if best is None else
                 f"<h2>Recommendation</h2><p>{e(best['label'])}: {best['capacity_rps']:.1f} req/s.</p>"
                 f"<p>{e(best['use'])}</p><h3>tensorflow_model_server flags</h3><pre>{e(' '.join(best['flags']))}</pre>"
                 + (f"<h3>batching_parameters.txt</h3><pre>{e(best['batching_parameters'])}</pre>"
                    if best["batching_parameters"] else "")
                 + f"<h3>spec fragment</h3><pre>{e(best['spec_fragment'])}</pre>")
    facts = (f"<p>{result['strategy']} search on the {e(result['backend'])} backend; {result['coverage']['trials']} "
             f"trials in {result['elapsed_s'] / 60:.1f} of {result['budget_s'] / 60:g} minutes"
             + (f" (the grid holds {result['coverage']['grid_size']})" if result['coverage']['grid_size'] else "")
             + (", stopped by the budget" if result["stopped_by"] == "budget" else "")
             + ("" if result["complete"] else ", <b>unfinished</b> (rerun the command to resume)") + ".</p>")
    return shell(f"tune: {result['model']}", f"tune: {result['model']} at {result['slo_text']}",
                 f"<p>{e(result['batching']['why'])}</p>" + facts
                 + (chart_slot("chart-pareto", "hover a probe for its trial and rate; a static copy: "
                               f"<a href='{e(plot)}'>{e(plot)}</a>") if plot
                    else "<p>No probe met the SLO: no Pareto plot.</p>")
                 + "<h2>Trials, best first</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
                 + "".join(rows) + "</table>" + best_html, headline=result["headline"],
                 data=json.dumps(chart_data(result), allow_nan=False) if plot else None)


def write(typed: TuneResult, out_dir: Path) -> None:
    """tune.json replaced whole (a checkpoint interrupted mid-write leaves the previous one), then tune.html."""

    save_atomically(out_dir / "tune.json", typed.to_json().encode())
    result = typed.to_dict()  # the page and the plot read the fields by their JSON names
    plot = plot_pareto(result, out_dir) if result["complete"] else None
    (out_dir / "tune.html").write_text(html_page(result, plot))
