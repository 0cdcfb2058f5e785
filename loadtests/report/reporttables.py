"""report.html's prose and tables, rendered in Python: the verdict paragraphs, capacity, thresholds, runs, where
the time goes, the protocol floor, correctness and provenance (reportpage adds the headline and the charts)."""
from __future__ import annotations

import html
from typing import Optional

from loadtests.analyze.limits import LIMITS
from loadtests.analyze.machine import shared_sentences
from loadtests.report import fmt, level_text


def html_body(summary: dict) -> dict:
    """The report page's verdict paragraphs and its tables (runs, thresholds, breakdown, floor, correctness,
    provenance) as HTML; reportpage adds the headline and the charts."""
    esc = html.escape
    runs = [[esc(r["protocol"]), esc(r["wire"]), esc(level_text(r)) + (f" #{r['repeat']}" if r.get("repeat", 1) > 1 else ""),
             str(r["requests"]),
             f"{r['failures']} ({r['failure_ratio']:.2%})", fmt(r["rps"], 1), fmt(r["p50_ms"]), fmt(r["p90_ms"]),
             fmt(r["p95_ms"]), fmt(r["p99_ms"]), _bound_cell(r), fmt(r["max_ms"]), fmt(r["service_p50_ms"]),
             fmt(r["service_p99_ms"]), "n/a" if r["late_ratio"] is None else f"{r['late_ratio']:.2%}",
             f"{r['bytes_per_request'] / 1024:.1f}", _measured_cell(r),
             fmt(r["generator_cpu_percent"], 0) + ("% <b class=bound>generator-bound</b>" if r["generator_bound"]
                                                    else "%"),
             fmt(r["server_cpu_percent"], 0), fmt(r.get("other_cpu_percent"), 0),
             "yes" if r["valid"] else "<b class=bad>no</b>: " + esc("; ".join(r["invalid_reasons"])),
             f"<a href='{esc(r['locust_html'])}'>Locust</a>"]
            for r in summary["runs"]]
    correctness = [[esc(c["protocol"]), esc(c["wire"]), str(c["images"]), f"{c['max_abs_diff']:.2e}",
                    "yes" if c["top1_equal"] else "no"] for c in summary["correctness"]]
    provenance = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in summary["provenance"].items())
    bound = sum(r["generator_bound"] for r in summary["runs"])
    notes = (f"<p class=bound>{bound} run(s) were generator-bound: the load generator used more than 80% of a core, "
             "so those numbers understate the server.</p>" if bound else "")
    shared = [r for r in summary["runs"] if r.get("shared_machine")]
    if shared:
        notes += (f"<p class=bound>{len(shared)} run(s) shared the machine with other work ("
                  + esc("; ".join(shared_sentences(shared)))
                  + "): their own figures hold, but a second run of the same setup may land elsewhere.</p>")
    verdict = ("<p class=bad>FAILED: a run's failure ratio exceeded the threshold.</p>" if summary["failed"] else "")
    answers = summary.get("answers") or {}
    if answers and not answers["informative"]:
        verdict += (f"<p class=bad>CORRECTNESS NOT INFORMATIVE: {esc(answers['reason'])}"
                    + (" (accepted by benchmark.accept_uninformative_answers)" if answers.get("accepted") else "")
                    + "</p>")
    if summary.get("invalid_runs"):
        verdict += (f"<p class=bad>INVALID: {summary['invalid_runs']} of {len(summary['runs'])} runs broke a validity "
                    "rule (see the valid column): their numbers cannot be trusted as measured.</p>")
    if summary.get("server_died"):
        verdict += (f"<p class=bad>The model server stopped during the sweep ({esc(summary['server_died'])}): "
                    f"{len(summary['runs'])} of {summary['runs_planned']} runs were measured.</p>")
    intro = (f"<p>{esc(summary['created'])}. {_mode_note(summary)} Latency percentiles are computed from every "
             "successful request of each measured window (warm-up excluded), not from Locust's rounded buckets. "
             "Throughput counts successful requests. The charts are drawn from the data in this page: hover a point "
             "or a bar for its values.</p>")
    tables = (f"{_capacity_section(summary)}{_thresholds_section(summary)}<h2>Runs</h2>"
              + _table(runs, ["protocol", "payload", "rate" if summary.get("mode") == "open" else "users", "requests",
                              "failures", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "upper bound ms", "max ms",
                              "service p50 ms", "service p99 ms", "late", "KiB/request", "measured s", "generator CPU",
                              "server CPU %", "other CPU %", "valid",
                              "Locust report"])
              + (_breakdown_section(summary) if any("server" in r for r in summary["runs"]) else "")
              + _floor_section(summary) + "<h2>Correctness before the sweep</h2>"
              + _answers_note(summary.get("answers"))
              + _table(correctness, ["protocol", "payload", "images", "max |score - in-process|", "top-1 equal"])
              + f"<h2>Provenance</h2><table>{provenance}</table>")
    return {"verdict": intro + verdict + notes, "tables": tables}


def _measured_cell(run: dict) -> str:
    """The span the figures come from; for an extended run also how long it measured in all, and why."""
    measured = run.get("measured_s", run.get("window_s"))
    if not run.get("extended_s"):
        return fmt(measured, 1)
    how = "settled" if run.get("stable") else "<b class=bad>did not settle</b>"
    return (f"{fmt(measured, 1)} <span class=note>(extended {fmt(run['duration_s'], 0)} &rarr; "
            f"{fmt(run['measured_total_s'], 0)} s, {how}; last {run['windows_used']} of {run['windows_total']} "
            f"sub-windows{_grouped(run)})</span>")


def _grouped(run: dict) -> str:
    group = run.get("windows_grouped") or 1
    return "" if group == 1 else f", judged in parts of {group}"


def _bound_cell(run: dict) -> str:
    """The judged percentile's upper confidence bound, or why there is none."""
    bound = run.get("upper_bound")
    if not bound:
        return "n/a"
    label = f"p{bound['percentile']:g} &le; "
    if bound.get("value_ms") is None:
        return f"<span class=note title='{html.escape(bound.get('reason', ''))}'>too few samples</span>"
    return f"{label}{fmt(bound['value_ms'])} <span class=note>({bound['confidence']:.0%})</span>"


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _thresholds_section(summary: dict) -> str:
    verdicts = summary.get("thresholds") or []
    if not verdicts:
        return ""
    esc = html.escape
    state = {True: "<b class=good>pass</b>", False: "<b class=bad>FAIL</b>", None: "not evaluated"}
    rows = [[state[v["passed"]], esc(v["threshold"]), esc(f"{v['protocol']} {v.get('wire') or v['payload']}")
             if v["protocol"] else "", "" if v["level"] is None else f"{v['level']:g}",
             fmt(v["value"], 4) if v["value"] is not None else "", esc(v["note"])] for v in verdicts]
    broken = sum(v["passed"] is False for v in verdicts)
    return ("<h2>Thresholds</h2>" + (f"<p class=bad>{broken} threshold check(s) broken: the command exits 6.</p>"
                                    if broken else "<p class=good>Every evaluated threshold passed.</p>")
            + _table(rows, ["", "threshold (benchmark.thresholds)", "protocol payload", "level", "value", "note"]))


def _capacity_section(summary: dict) -> str:
    results = summary.get("capacity")
    if not results:
        return ""

    esc = html.escape
    slo = summary["settings"]["slo"]
    rows = [[esc(r["protocol"]), esc(r["wire"]), f"<b>{r['capacity_rps']:.1f}</b>",
             esc(" - ".join("n/a" if b is None else f"{b:.1f}" for b in r["bracket"])), str(len(r["probes"])),
             esc(LIMITS[r["limited_by"]])] for r in results]
    return (f"<h2>Capacity at p{slo['percentile']:g} &le; {slo['latency_ms']:g} ms</h2>"
            "<p>The highest open-loop arrival rate whose run was valid, within the SLO and under the failure "
            "threshold (bracketed by doubling, then bisected); every probe is in the runs below and in "
            "capacity.json.</p>"
            + _table(rows, ["protocol", "payload", "capacity req/s", "bracket (pass - fail)", "probes", "note"]))


def _breakdown_section(summary: dict) -> str:
    esc = html.escape
    rows = []
    for r in summary["runs"]:
        server, parts = r.get("server") or {}, r.get("breakdown") or {}
        if not server.get("available"):
            rows.append([esc(r["protocol"]), esc(r["wire"]), esc(level_text(r)),
                         f"<td colspan=13 style='text-align:left'>no server metrics: {esc(server.get('reason', ''))}"])
            continue

        def bucketed(q: int) -> str:
            bounds = server.get(f"request_p{q}_bucket_ms") or [None, None]
            return (f"{fmt(server.get(f'request_p{q}_ms'))} <small>[{fmt(bounds[0])}, "
                    f"{fmt(bounds[1]) if bounds[1] is not None else '&infin;'})</small>")
        rows.append([esc(r["protocol"]), esc(r["wire"]), esc(level_text(r)), fmt(parts.get("client_mean_ms")),
                     fmt(parts.get("outside_server_ms")), fmt(parts.get("server_overhead_ms")),
                     fmt(parts.get("queue_ms")), fmt(parts.get("model_ms")), fmt(server.get("request_mean_ms")),
                     bucketed(50), bucketed(99), f"{server['requests']} / {server.get('client_requests', 'n/a')}",
                     fmt(server.get("batch_size_mean")) + (f" ({server['padding_ratio']:.0%} padding)"
                                                             if server.get("batching") else ""),
                     fmt(r.get("server_core_ms_per_request")), fmt(r.get("generator_core_ms_per_request"))])
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    header = ["protocol", "payload", "level", "client mean", "outside server", "server overhead", "queue", "model",
              "server mean", "server p50 [bucket)", "server p99 [bucket)", "server / client requests",
              "batch size", "server core-ms/req", "generator core-ms/req"]
    source = next((r["server"]["source"] for r in summary["runs"] if (r.get("server") or {}).get("source")), None)
    return ("<h2>Where the time goes</h2><p>From the server's own Prometheus metrics"
            + (f" (<code>{esc(source)}</code>)" if source else "") + ", scraped as each window opened and closed: "
            "only their differences count. Means in ms from the client's send: outside the server is the client's "
            "mean minus TF Serving's request_latency (network, the client's encoding and decoding, the load "
            "generator); server overhead is request_latency minus runtime_latency (parsing the request, "
            "serialising the answer); runtime_latency includes the batching queue, so the model's share is the "
            "runtime minus the queue. Server percentiles are interpolated inside TF Serving's histogram buckets, "
            "whose bounds follow them.</p>"
            + f"<table><thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in header)}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _floor_section(summary: dict) -> str:
    floor = summary.get("floor")
    if not floor:
        return ""
    esc = html.escape
    rows = [[esc(row["protocol"]), esc(row["wire"]), esc(level_text(row)), fmt(row["model_p50_ms"]),
             fmt(row["floor_p50_ms"]), fmt(row["model_mean_ms"]), fmt(row["floor_mean_ms"]),
             "n/a" if row["floor_share"] is None else f"{row['floor_share']:.0%}", fmt(row["model_rps"], 1),
             fmt(row["floor_rps"], 1), fmt(row["floor_outside_server_ms"]), fmt(row["floor_server_overhead_ms"]),
             fmt(row["floor_model_ms"]), "yes" if row["floor_valid"] else "<b class=bad>no</b>"]
            for row in floor["beside"]]
    return (f"<h2>Protocol floor</h2><p><code>{esc(floor['model'])}</code> has this model's signatures, input size "
            "and preprocessing (decoding and resizing in the graph) but an almost free head "
            f"(<code>{esc(floor['function'])}</code>, {floor['classes']} classes). Run through the same sweep, it "
            "shows what each protocol and payload costs before any model work: the floor's share is its mean "
            "latency over the model's. Its runs are in <code>floor/</code>.</p>"
            + _table(rows, ["protocol", "payload", "level", "model p50 ms", "floor p50 ms", "model mean ms",
                            "floor mean ms", "floor share", "model req/s", "floor req/s", "floor outside server",
                            "floor server overhead", "floor model (decode, preprocess)", "floor valid"]))


def _answers_note(answers: Optional[dict]) -> str:
    if not answers:
        return ""
    if answers["informative"]:
        return (f"<p>Informative: the in-process answers depend on the image ({answers['distinct_top1']} different "
                f"top-1 classes over {answers['images']} images, scores differing by up to "
                f"{answers['max_score_spread']:.3f}), so a wrong answer fails the check.</p>")
    return f"<p class=bad>Not informative: {html.escape(answers['reason'])}.</p>"


def _mode_note(summary: dict) -> str:
    if summary.get("mode") == "open":
        return ("Open loop: requests start at scheduled times whether or not earlier ones have answered, and latency "
                "runs from the scheduled time (queueing included); service time runs from the actual send.")
    return "Closed loop: each user sends its next request when the last one has answered."
