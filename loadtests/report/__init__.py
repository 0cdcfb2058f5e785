"""What every report shares: the page shell (`shell`, one Jinja2 template and one stylesheet for every page) and
the chart slots report.js draws into, and the bench report's terminal text (the one-screen summary, the breakdown,
the floor, the thresholds)."""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional, Sequence

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from loadtests.analyze.figures import folded
from loadtests.drive.payloads import GRPC_WIRE
from spec.resources import package_dir
from spec.results import BenchSummary


@functools.lru_cache(maxsize=1)
def assets() -> Path:
    """The pages' template, stylesheet and script (package data)."""
    return package_dir("loadtests.report") / "assets"


@functools.lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(str(assets())), autoescape=True, keep_trailing_newline=True)


def chart_slot(chart_id: str, note: str = "", picker: str = "") -> str:
    """Where report.js draws a chart (by its id), with its caption and, for a chart of one run or level, a picker."""
    select = f"<label>run <select id='{picker}'></select></label>" if picker else ""
    return f"<figure>{select}<div class='chart' id='{chart_id}'></div><figcaption>{note}</figcaption></figure>"


def shell(title: str, heading: str, body: str, headline: Optional[str] = None, data: Optional[str] = None) -> str:
    """Every page the harness writes (bench, capacity, tune, compare), in one shell with one stylesheet
    (assets/page.html, assets/report.css). `title`, `heading` and `headline` are text, escaped here; `body` is
    the page's own HTML; `data`, the charts' JSON, adds report.js, which draws the page's charts from it."""
    return _templates().get_template("page.html").render(
        title=title, heading=heading, headline=headline, body=Markup(body),
        stylesheet=Markup((assets() / "report.css").read_text()),
        data=None if data is None else Markup(data.replace("</", "<\\/")),
        script=Markup((assets() / "report.js").read_text()) if data is not None else "")


# the breakdown's stack, bottom to top: (key, label, colour)
PARTS = (("model_ms", "model (runtime - queue)", "tab:green"), ("queue_ms", "batching queue", "tab:purple"),
         ("server_overhead_ms", "server overhead (request - runtime)", "tab:olive"),
         ("outside_server_ms", "outside the server (client - request)", "tab:gray"))


def pairs(runs: Sequence[dict]) -> list[tuple[str, str]]:
    """(REST payload, gRPC wire) comparisons present in the runs: each REST encoding against gRPC's."""
    rest = sorted({r["payload"] for r in runs if r["protocol"] == "rest"}, key=list(GRPC_WIRE).index)
    grpc = {r["wire"] for r in runs if r["protocol"] == "grpc"}
    found = [(p, GRPC_WIRE[p]) for p in rest if GRPC_WIRE[p] in grpc]
    found += [(p, None) for p in rest if GRPC_WIRE[p] not in grpc]
    found += [(None, w) for w in sorted(grpc) if w not in {GRPC_WIRE[p] for p in rest}]
    return found


def series(runs, protocol: str, key: str) -> list[dict]:
    """One protocol's runs of one payload (REST) or wire (gRPC), by level."""
    field = "payload" if protocol == "rest" else "wire"
    return sorted((r for r in runs if r["protocol"] == protocol and r[field] == key), key=lambda r: r["level"])


def level_text(run: dict) -> str:
    return f"{run['level']:g}/s" if run["mode"] == "open" else str(run["users"])


def run_name(run: dict) -> str:
    return f"{'REST' if run['protocol'] == 'rest' else 'gRPC'} {run['wire']}"


def breakdown_lines(runs: Sequence[dict]) -> list[str]:
    """The terminal's 'where the time goes': one line per run, means in ms, and CPU per request."""
    lines = ["\n  where the time goes (mean ms from send = outside the server + server overhead + queue + model; "
             "CPU in core-ms per request)"]
    for r in runs:
        parts, server = r.get("breakdown"), r.get("server") or {}
        head = f"    {run_name(r):22} {level_text(r):>7}: "
        if not parts:
            lines.append(head + f"no server metrics ({server.get('reason', 'not scraped')})")
            continue
        queue = f" + queue {fmt(parts['queue_ms'])}" if parts.get("queue_ms") is not None else ""
        batch = (f"  batch {server['batch_size_mean']:.1f}, padding {server['padding_ratio']:.0%}"
                 if server.get("batching") else "")
        lines.append(head + f"{fmt(parts['client_mean_ms'])} = outside {fmt(parts['outside_server_ms'])} + server "
                     f"{fmt(parts['server_overhead_ms'])}{queue} + model {fmt(parts['model_ms'])}  | CPU server "
                     f"{fmt(r.get('server_core_ms_per_request'))}, generator "
                     f"{fmt(r.get('generator_core_ms_per_request'))}{batch}")
    return lines


def floor_lines(summary: dict) -> list[str]:
    """The terminal's protocol-floor block: each run's p50 and mean beside the floor's, and the floor's share."""
    floor = summary.get("floor")
    if not floor:
        return []
    lines = [f"\n  protocol floor ({floor['model']}: the same signatures and preprocessing, an almost free head)",
             f"    {'':22} {'level':>7} | {'p50 ms':>7} {'floor':>7} | {'mean ms':>7} {'floor':>7} {'share':>6}"]
    for row in floor["beside"]:
        share = "n/a" if row["floor_share"] is None else f"{row['floor_share']:.0%}"
        flag = "" if row["floor_valid"] else " !"
        lines.append(f"    {run_name(row):22} {level_text(row):>7} | {fmt(row['model_p50_ms']):>7} "
                     f"{fmt(row['floor_p50_ms']):>7} | {fmt(row['model_mean_ms']):>7} {fmt(row['floor_mean_ms']):>7} "
                     f"{share:>6}{flag}")
    return lines


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def threshold_lines(summary: BenchSummary) -> list[str]:
    """The terminal's thresholds block: every rule's verdict, failures first named."""
    verdicts = summary.thresholds or []
    if not verdicts:
        return []
    broken = [v for v in verdicts if v["passed"] is False]
    lines = [f"\n  thresholds: {'PASSED' if not broken else f'{len(broken)} BROKEN'} "
             f"({sum(v['passed'] is True for v in verdicts)} passed, {len(broken)} broken, "
             f"{sum(v['passed'] is None for v in verdicts)} not evaluated)"]
    for v in sorted(verdicts, key=lambda v: v["passed"] is not False):
        where = f"{v['protocol']} {v.get('wire') or v['payload']} at {v['level']:g}" if v["protocol"] else ""
        state = {True: "pass", False: "FAIL", None: "n/a "}[v["passed"]]
        value = "" if v["value"] is None else f" = {v['value']:.4g}"
        lines.append(f"    {state} {v['threshold']:32} {where}{value}{'  ' + v['note'] if v['note'] else ''}")
    return lines


def terminal_summary(typed: BenchSummary) -> str:
    """One screen: per comparison and level, p50 and throughput of each protocol and their REST/gRPC ratio
    (repeats folded into their median), then the breakdown, the floor, validity and the thresholds."""
    summary = typed.to_dict()  # the tables read the runs' fields by their JSON names

    measured = summary["runs"]
    runs = folded(measured)
    repeats = max((r["repeats"] for r in runs), default=1)
    lines = [f"{summary['model']}: {len(measured)} runs on {served_by(summary.get('provenance', {}))}, "
             f"report in {summary['report_dir']}" + (f" (figures: the median of {repeats} repeats)" if repeats > 1
                                                      else "")]
    for rest_payload, grpc_wire in pairs(runs):
        lines.append(f"\n  REST {rest_payload or '-'}  vs  gRPC {grpc_wire or '-'}")
        name = "rate" if runs and runs[0]["mode"] == "open" else "users"
        lines.append(f"  {name:>7} | {'REST p50':>9} {'REST rps':>9} | {'gRPC p50':>9} {'gRPC rps':>9} | "
                     f"{'p50 REST/gRPC':>13} {'rps REST/gRPC':>13}")
        rest = {r["level"]: r for r in series(runs, "rest", rest_payload)} if rest_payload else {}
        grpc = {r["level"]: r for r in series(runs, "grpc", grpc_wire)} if grpc_wire else {}
        for level in sorted(set(rest) | set(grpc)):
            a, b = rest.get(level), grpc.get(level)
            p50 = fmt(a["p50_ms"] / b["p50_ms"]) + "x" if a and b and b["p50_ms"] else "n/a"
            rps = fmt(a["rps"] / b["rps"]) + "x" if a and b and b["rps"] else "n/a"
            invalid = " !" if (a and not a["valid"]) or (b and not b["valid"]) else ""
            lines.append(f"  {level_text(a or b):>7} | {fmt(a and a['p50_ms']):>9} {fmt(a and a['rps'], 1):>9} | "
                         f"{fmt(b and b['p50_ms']):>9} {fmt(b and b['rps'], 1):>9} | {p50:>13} {rps:>13}{invalid}")
    answers = summary.get("answers") or {}
    if answers and not answers["informative"]:
        lines.append(f"\n  ! CORRECTNESS NOT INFORMATIVE: {answers['reason']}"
                     + (" (accepted by benchmark.accept_uninformative_answers)" if answers.get("accepted") else ""))
    if runs and any("server" in r for r in runs):
        lines += breakdown_lines(runs)
    lines += floor_lines(summary)
    invalid = [r for r in runs if not r["valid"]]
    if invalid:
        lines.append(f"\n  ! INVALID: {len(invalid)} of {len(runs)} runs cannot be trusted as measured:")
        for r in invalid:
            lines.append(f"    {r['protocol']} {r['wire']} {level_text(r)}: {'; '.join(r['invalid_reasons'])}")
    shared = [r for r in runs if r.get("shared_machine")]
    if shared:
        lines.append(f"\n  ! SHARED MACHINE: {len(shared)} of {len(runs)} runs shared the machine with other work (their "
                     "own figures hold; a second run of the same setup may land elsewhere):")
        for r in shared:
            lines.append(f"    {r['protocol']} {r['wire']} {level_text(r)}: {'; '.join(r['shared_machine'])}")
    failing = [r for r in measured if r["failure_ratio"] > summary["failure_threshold"]]
    if summary.get("server_died"):
        lines.append(f"  SERVER STOPPED during the sweep: {summary['server_died']}; "
                     f"{len(runs)} of {summary['runs_planned']} runs measured")
    for r in failing:
        reason = next(iter(r["failure_reasons"]), "")
        lines.append(f"  FAILED {r['protocol']} {r['wire']} users={r['users']}: {r['failures']}/{r['requests']} "
                     f"failed (threshold {summary['failure_threshold']:.2%}); first reason: {reason}")
    lines += threshold_lines(typed)
    return "\n".join(lines)


def served_by(provenance: dict) -> str:
    """'docker: TensorFlow Serving (tensorflow/serving:2.21.0, sha256:...)': what really answered the requests."""
    server = provenance.get("server") or "unknown server"
    base = provenance.get("base_image")
    base_id = (provenance.get("base_image_id") or "")[:19]
    detail = f" ({base}{', ' + base_id if base_id else ''})" if base else ""
    return f"{provenance.get('backend', '')}: {server}{detail}"


def profile_line(entry: dict, run_dir: Path) -> str:
    """Where a traced run's server profile is (--profile), or why there is none."""
    profile = entry.get("profile") or {}
    level = entry.get("level_text") or (f"{entry['offered_rps']:g} req/s" if entry.get("offered_rps")
                                        else f"{entry.get('users')} users")
    where = f"{entry['protocol']} {entry['wire']} at {level}"
    if not profile.get("file"):
        return f"profile: none for {where}: {profile.get('error') or 'the run did not report one'}"
    return (f"profile: the server over {where}'s window: {run_dir / profile['file']}\n"
            f"  tensorboard --logdir {run_dir / 'profile'}  (the Profile tab)"
            + (f"\n  note: {profile['error']}" if profile.get("error") else ""))
