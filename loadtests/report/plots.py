"""Every PNG the harness writes, in one place (matplotlib): the bench report's copies of its charts (latency,
throughput, size, breakdown), the capacity plot, tune's Pareto plot and the results history. The pages draw their
interactive charts with report.js from the same figures; these are the static copies for slides and tickets."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from loadtests.report import PARTS, level_text, pairs, series
from loadtests.report.historypage import key_figures

PLOTS = ("latency.png", "throughput.png", "latency_vs_size.png")
BREAKDOWN_PLOT = "breakdown.png"
PARETO_PLOT = "pareto.png"


def _level_name(runs) -> str:
    return "offered load (requests/s)" if runs and runs[0]["mode"] == "open" else "concurrent users"


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
            cell = series(runs, protocol, key)
            users = [r["level"] for r in cell]
            name = f"{'REST' if protocol == 'rest' else 'gRPC'} {key}"
            for pct, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
                ax_l.plot(users, [r[pct] for r in cell], style, marker="o", color=colour,
                          label=f"{name} {pct[:-3]}")
            ax_t.plot(users, [r["rps"] for r in cell], "-", marker="o", color=colour, label=name)
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
            for r in series(runs, protocol, key):
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


def pareto_points(result: dict) -> list[dict]:
    """Every trial's passing probes (its Pareto points), each with its trial's index."""
    return [dict(p, trial=t["index"]) for t in result["trials"] for p in t.get("pareto_points", [])
            if p.get("slo_ms") is not None]


def plot_pareto(result: dict, out_dir: Path) -> Optional[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(result)
    if not points:
        return None
    key = result["slo"]["percentile"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for index in sorted({p["trial"] for p in points}):
        mine = [p for p in points if p["trial"] == index]
        ax.scatter([p["achieved_rps"] for p in mine], [p["slo_ms"] for p in mine], s=18, label=f"trial {index}")
    for cell in {(p["protocol"], p["wire"]) for p in result["pareto"]}:
        front = [p for p in result["pareto"] if (p["protocol"], p["wire"]) == cell]
        ax.step([p["achieved_rps"] for p in front], [p["slo_ms"] for p in front], where="post", color="black",
                linewidth=1)
    ax.axhline(result["slo"]["latency_ms"], color="red", linestyle="--", linewidth=1, label="SLO")
    ax.set_xlabel("throughput (answered requests/s)")
    ax.set_ylabel(f"p{key:g} latency from the scheduled send (ms)")
    ax.set_title("passing probes of every trial; the line is the Pareto front")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / PARETO_PLOT, dpi=110)
    plt.close(fig)
    return PARETO_PLOT


def plot_history(results: list[dict], path: Path) -> Path:
    """history.png: each protocol/payload's p50 (lowest level), highest throughput and capacity, run after run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("p50_ms", "p50 at the lowest level (ms)"), ("max_rps", "highest throughput (req/s)"),
              ("capacity_rps", "capacity under the SLO (req/s)"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    labels = [f"{i + 1}\n{(r['git_commit'] or '?')[:7]}" for i, r in enumerate(results)]
    for ax, (key, title) in zip(axes, panels):
        by_cell: dict[str, list] = {}
        for i, result in enumerate(results):
            for figure in key_figures(result):
                if figure[key] is not None:
                    by_cell.setdefault(figure["cell"], []).append((i, figure[key]))
        for name, points in by_cell.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], "-o", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(results)), labels, fontsize=7)
        ax.set_xlabel("result (oldest first) and git commit")
        ax.grid(alpha=0.3)
        if by_cell:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
