"""The bench report: summary.json, report.html with plots, and a one-screen terminal summary."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from loadtests.analyze.figures import folded
from loadtests.drive.payloads import GRPC_WIRE
from spec.results import BenchSummary

PLOTS = ("latency.png", "throughput.png", "latency_vs_size.png")
BREAKDOWN_PLOT = "breakdown.png"
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


def _series(runs, protocol: str, key: str) -> list[dict]:
    field = "payload" if protocol == "rest" else "wire"
    return sorted((r for r in runs if r["protocol"] == protocol and r[field] == key), key=lambda r: r["level"])


def _level_name(runs) -> str:
    return "offered load (requests/s)" if runs and runs[0]["mode"] == "open" else "concurrent users"


def level_text(run: dict) -> str:
    return f"{run['level']:g}/s" if run["mode"] == "open" else str(run["users"])


def plot(runs: Sequence[dict], out_dir: Path) -> list[str]:
    """Write the report's PNG plots into out_dir; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = pairs(runs)
    fig_l, axes_l = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    fig_t, axes_t = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for column, (rest_payload, grpc_wire) in enumerate(groups):
        ax_l, ax_t = axes_l[0][column], axes_t[0][column]
        for protocol, key, colour in (("rest", rest_payload, "tab:blue"), ("grpc", grpc_wire, "tab:orange")):
            if key is None:
                continue
            series = _series(runs, protocol, key)
            users = [r["level"] for r in series]
            name = f"{'REST' if protocol == 'rest' else 'gRPC'} {key}"
            for pct, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
                ax_l.plot(users, [r[pct] for r in series], style, marker="o", color=colour,
                          label=f"{name} {pct[:-3]}")
            ax_t.plot(users, [r["rps"] for r in series], "-", marker="o", color=colour, label=name)
        title = " vs ".join(filter(None, [rest_payload and f"REST {rest_payload}", grpc_wire and f"gRPC {grpc_wire}"]))
        for ax, ylabel in ((ax_l, "latency (ms)"), (ax_t, "throughput (requests/s)")):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(_level_name(runs))
            levels = sorted({r["level"] for r in runs})
            if len(levels) <= 12:
                ax.set_xticks(levels)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig_l.tight_layout()
    fig_l.savefig(out_dir / PLOTS[0], dpi=110)
    fig_t.tight_layout()
    fig_t.savefig(out_dir / PLOTS[1], dpi=110)

    fig_s, ax = plt.subplots(figsize=(7, 4.2))
    lowest = min(r["level"] for r in runs)
    for r in runs:
        if r["level"] != lowest or not r["by_image"]:
            continue
        ax.scatter([b["request_bytes"] / 1024 for b in r["by_image"]], [b["p50_ms"] for b in r["by_image"]],
                   label=f"{'REST' if r['protocol'] == 'rest' else 'gRPC'} {r['wire']}", s=22)
    ax.set_xscale("log")
    ax.set_xlabel("request size (KiB, log scale)")
    ax.set_ylabel(f"p50 latency per image (ms), {level_text(min(runs, key=lambda r: r['level']))}"
                  + (" user(s)" if runs[0]["mode"] == "closed" else ""))
    ax.set_title("latency against image/request size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig_s.tight_layout()
    fig_s.savefig(out_dir / PLOTS[2], dpi=110)
    plt.close("all")
    return list(PLOTS)


def _name(run: dict) -> str:
    return f"{'REST' if run['protocol'] == 'rest' else 'gRPC'} {run['wire']}"


def plot_breakdown(runs: Sequence[dict], out_dir: Path) -> Optional[str]:
    """Stacked bars of each run's mean time, REST beside gRPC at every level, one panel per payload pair."""
    if not any(r.get("breakdown") for r in runs):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = pairs(runs)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.4), squeeze=False)
    for ax, (rest_payload, grpc_wire) in zip(axes[0], groups):
        levels = sorted({r["level"] for r in runs})
        labelled = set()
        for offset, (protocol, key, hatch) in enumerate((("rest", rest_payload, ""), ("grpc", grpc_wire, "//"))):
            if key is None:
                continue
            for r in _series(runs, protocol, key):
                parts, x, bottom = r.get("breakdown"), levels.index(r["level"]) + (offset - 0.5) * 0.38, 0.0
                if not parts:
                    continue
                for part, label, colour in PARTS:
                    height = parts.get(part) or 0.0
                    if height <= 0:
                        continue
                    ax.bar(x, height, 0.36, bottom=bottom, color=colour, hatch=hatch, edgecolor="white",
                           label=label if label not in labelled else None)
                    labelled.add(label)
                    bottom += height
                ax.text(x, bottom, "REST" if protocol == "rest" else "gRPC", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(levels)), [level_text({"level": v, "users": v, "mode": runs[0]["mode"]}) for v in levels])
        ax.set_xlabel(_level_name(runs))
        ax.set_ylabel("mean latency from send (ms)")
        ax.set_title(" vs ".join(filter(None, [rest_payload and f"REST {rest_payload}",
                                               grpc_wire and f"gRPC {grpc_wire}"])), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / BREAKDOWN_PLOT, dpi=110)
    plt.close(fig)
    return BREAKDOWN_PLOT


def breakdown_lines(runs: Sequence[dict]) -> list[str]:
    """The terminal's 'where the time goes': one line per run, means in ms, and CPU per request."""
    lines = ["\n  where the time goes (mean ms from send = outside the server + server overhead + queue + model; "
             "CPU in core-ms per request)"]
    for r in runs:
        parts, server = r.get("breakdown"), r.get("server") or {}
        head = f"    {_name(r):22} {level_text(r):>7}: "
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
        lines.append(f"    {_name(row):22} {level_text(row):>7} | {fmt(row['model_p50_ms']):>7} "
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
        rest = {r["level"]: r for r in _series(runs, "rest", rest_payload)} if rest_payload else {}
        grpc = {r["level"]: r for r in _series(runs, "grpc", grpc_wire)} if grpc_wire else {}
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


def plot_capacity(results: Sequence[dict], slo: dict, out_dir: Path) -> str:
    """The SLO percentile against offered load, REST and gRPC on one plot per payload: the knee shows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"p{slo['percentile']:g}_ms"
    payloads = list(dict.fromkeys(r["payload"] for r in results))
    fig, axes = plt.subplots(1, len(payloads), figsize=(6 * len(payloads), 4.4), squeeze=False)
    for ax, payload in zip(axes[0], payloads):
        for r in (r for r in results if r["payload"] == payload):
            probes = sorted((p for p in r["probes"] if p[key] is not None), key=lambda p: p["offered_rps"])
            colour = "tab:blue" if r["protocol"] == "rest" else "tab:orange"
            name = f"{'REST' if r['protocol'] == 'rest' else 'gRPC'} {r['wire']}"
            ax.plot([p["offered_rps"] for p in probes], [p[key] for p in probes], "-", color=colour, alpha=0.5)
            for p in probes:
                ax.plot(p["offered_rps"], p[key], "o" if p["meets_slo"] else "x", color=colour)
            ax.axvline(r["capacity_rps"], color=colour, linestyle=":", label=f"{name}: {r['capacity_rps']:.1f} req/s")
        ax.axhline(slo["latency_ms"], color="tab:red", linestyle="--", label=f"SLO p{slo['percentile']:g} "
                   f"{slo['latency_ms']:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel(f"p{slo['percentile']:g} latency from scheduled send (ms, log)")
        ax.set_title(f"{payload}: o pass, x fail", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "capacity.png", dpi=110)
    plt.close(fig)
    return "capacity.png"


def plain(value):
    """NaN/Inf become null: summary.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


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
