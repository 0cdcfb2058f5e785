"""Compare's statistics (make compare A=<report dir> B=<report dir>): did B get slower or faster than A, with a
95% interval.

Runs are matched by protocol, payload and level. For p50, p99 and throughput each match gets A, B, the change in
percent (B over A) with a 95% confidence interval, and a verdict. The interval comes from the variation between
runs where there is some:
- both sides repeated (benchmark.repeats >= 2): a Welch t interval on the log of the per-repeat figures,
  widened by bench-to-bench noise. The repeats' spread says how well each bench's mean is known, not how far a
  second bench of the same setup, minutes later, would land: every repeat of a bench shares the machine's state
  of those minutes, so more repeats narrow a Welch interval while that offset stays. A bench's offset is taken
  to vary as much as one run does, so the Welch half-width is combined (in quadrature) with
  t(df) x sqrt(s_A^2 + s_B^2), s the standard deviation of the log figure between a side's repeats, df the
  repeats less one per side (the one-run case below does the same with a run's sub-windows);
- otherwise a block bootstrap: each run's window is cut into consecutive time blocks, blocks are resampled with
  replacement and the figure recomputed from their samples, so slow drift and stalls inside a run widen the
  interval where a per-request bootstrap would not see them. One run per side cannot see how much a second run
  of the same setup would differ (a shared machine drifts between runs more than within one), so the interval
  is widened by that run-to-run noise, estimated from the spread of the figure between each run's own
  sub-windows (a run's sub-windows are consecutive short runs of the same setup): the bootstrap's half-width and
  t(df) x sqrt(s_A^2 + s_B^2) combined in quadrature, s the standard deviation of the log figure over a run's
  sub-windows and df their count less one per side.
A change smaller than the minimum effect is `no change` whatever its significance; otherwise it is `slower` or
`faster` when the interval excludes zero.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from loadtests.analyze import validity
from loadtests.analyze.machine import drift_sentence, shared_sentences, speed_change_pct
from spec.errors import UsageError
from spec.results import BenchSummary, CompareRow, Run
from spec.resultschema import version_of

METRICS = ("p50", "p99", "rps")
BLOCKS = 10
RESAMPLES = 2000
DEFAULT_MIN_EFFECT = 0.05
_RULE = re.compile(r"^\s*(p50|p99|rps)\s*:\s*([+-]?)\s*(\d+(?:\.\d*)?)\s*%\s*$")


@dataclass(frozen=True)
class FailOn:
    """`p99:+10%`: broken when p99 is `slower` by more than 10%; `rps:-5%`: when throughput drops by more."""
    metric: str
    limit_pct: float  # signed: the bad direction

    @property
    def text(self) -> str:
        return f"{self.metric}:{self.limit_pct:+g}%"

    def broken_by(self, row: CompareRow) -> bool:
        if row.metric != self.metric or row.verdict == "no change" or row.change_pct is None:
            return False
        bad = "faster" if self.metric == "rps" else "slower"
        return row.verdict == bad and abs(row.change_pct) > abs(self.limit_pct)


def parse_fail_on(text: Optional[str]) -> list[FailOn]:
    """Comma-separated rules; SpecError naming the rule when one is malformed."""
    rules = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        match = _RULE.match(part)
        if not match:
            raise UsageError(f"--fail-on {part!r}: write metric:change, e.g. p99:+10% or rps:-5% (metrics "
                            f"{', '.join(METRICS)})")
        metric, sign, number = match.groups()
        bad_sign = -1.0 if metric == "rps" else 1.0
        if sign and (sign == "-") != (bad_sign < 0):
            raise UsageError(f"--fail-on {part!r}: a {'drop' if metric == 'rps' else 'rise'} is what makes "
                            f"{metric} worse: write {metric}:{'-' if bad_sign < 0 else '+'}{number}%")
        rules.append(FailOn(metric, bad_sign * float(number)))
    return rules


def parse_effect(text: Optional[str]) -> float:
    if text is None:
        return DEFAULT_MIN_EFFECT
    match = re.match(r"^\s*(\d+(?:\.\d*)?)\s*(%?)\s*$", text)
    value = float(match.group(1)) / (100.0 if match.group(2) or float(match.group(1)) >= 1 else 1.0) if match else -1
    if not 0 <= value < 1:
        raise UsageError(f"--min-effect {text!r}: give a percentage below 100, e.g. 5%")
    return value


def load_run(path: Path, side: str) -> tuple[Path, BenchSummary]:
    """A report directory (or its summary.json, or a `latest` link) and its summary; UsageError when it is none."""
    path = Path(path)
    summary_file = path / "summary.json" if path.is_dir() else path
    if not summary_file.is_file():
        raise UsageError(f"{side}={path}: no summary.json there; give a report directory such as "
                        "reports/<model>/<timestamp> (or reports/<model>/latest)")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict):
        version_of(summary, f"{side}={summary_file}")  # a newer layout is refused before its fields are read
    if not isinstance(summary, dict) or not isinstance(summary.get("runs"), list):
        raise UsageError(f"{side}={summary_file}: not a bench summary.json (no runs)")
    if summary.get("capacity") is not None:
        raise UsageError(f"{side}={path}: a capacity search, not a bench; compare matches bench runs (the capacity "
                        "of each search is in make history)")
    return summary_file.parent.resolve(), BenchSummary.from_dict(summary, f"{side}={summary_file}")


# ------------------------------------------------------------------------ the figures and their intervals

def _blocks(run: Run, run_dir: Path, side: str) -> dict:
    """The run's samples cut into BLOCKS time blocks: good latencies per block and completions per block."""
    if not run.samples_file:
        raise UsageError(f"{side}: a {run.protocol} {run.wire} run in {run_dir} has no samples_file: compare "
                         "recomputes every figure from the samples of the run")
    path = run_dir / "samples" / run.samples_file
    if not path.is_file():
        raise UsageError(f"{side}: {path} is missing: compare recomputes every figure from the samples of the run")
    with np.load(path) as data:
        t, latency, ok, due = data["t"], data["latency_ms"], data["ok"], data["due"]
        meta = json.loads(data["meta"].tobytes())
    window = float(meta["window_s"] or run.window_s)
    key = due if run.mode == "open" else t
    inside = (key >= 0) & (key < window) & ok
    index = np.minimum((key[inside] / window * BLOCKS).astype(int), BLOCKS - 1)
    latencies = [latency[inside][index == b] for b in range(BLOCKS)]
    done = ok & (t >= 0) & (t <= window)
    completions = np.bincount(np.minimum((t[done] / window * BLOCKS).astype(int), BLOCKS - 1), minlength=BLOCKS)
    # the run's sub-windows (as it was judged: settled runs record them), each a short run of the same setup
    count = int((meta.get("settled") or {}).get("windows_used") or validity.SUB_WINDOWS)
    edges = np.linspace(0.0, window, count + 1)
    sub = {metric: [] for metric in METRICS}
    for low, high in zip(edges[:-1], edges[1:]):
        mine = latency[(key >= low) & (key < high) & ok]
        sub["rps"].append(float((done & (t >= low) & (t < high)).sum() / (high - low)))
        for metric in ("p50", "p99"):
            sub[metric].append(float(np.percentile(mine, 50 if metric == "p50" else 99)) if mine.size else math.nan)
    return {"latencies": latencies, "completions": completions, "block_s": window / BLOCKS, "sub_windows": sub}


def _run_noise(side_runs: list[dict], metric: str) -> tuple[float, int]:
    """(variance, degrees of freedom) of a side's log figure from run to run, estimated from the spread between
    each run's sub-windows; averaged over the side's runs (their mean's variance: divided by their count)."""
    variances, df = [], 0
    for blocks in side_runs:
        values = np.log(np.asarray(blocks["sub_windows"][metric], dtype=float))
        values = values[np.isfinite(values)]
        if values.size >= 2:
            variances.append(float(values.var(ddof=1)))
            df += values.size - 1
    if not variances:
        return math.inf, 0
    return float(np.mean(variances)) / len(side_runs), df


def _figure(metric: str, latencies: Sequence[np.ndarray], completions: np.ndarray, block_s: float) -> float:
    if metric == "rps":
        return float(completions.sum() / (len(completions) * block_s))
    pooled = np.concatenate(latencies) if latencies else np.array([])
    return float(np.percentile(pooled, 50 if metric == "p50" else 99)) if pooled.size else float("nan")


def _bootstrap(side_runs: list[dict], metric: str, rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES bootstrap figures of one side: blocks resampled within each run, repeats' figures averaged
    (geometrically)."""
    logs = np.zeros(RESAMPLES)
    for blocks in side_runs:
        picks = rng.integers(0, BLOCKS, size=(RESAMPLES, BLOCKS))
        values = np.empty(RESAMPLES)
        for i, pick in enumerate(picks):
            values[i] = _figure(metric, [blocks["latencies"][b] for b in pick], blocks["completions"][pick],
                                blocks["block_s"])
        with np.errstate(divide="ignore", invalid="ignore"):
            logs += np.log(values)
    return logs / len(side_runs)


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% interval of mean(log b) - mean(log a), Welch's t."""
    from scipy import stats

    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    diff = float(b.mean() - a.mean())
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / ((va ** 2 / (a.size - 1) if va else 0) + (vb ** 2 / (b.size - 1) if vb else 0))
    half = float(stats.t.ppf(0.975, df)) * se
    return diff - half, diff + half


def _pct(log_ratio: float) -> Optional[float]:
    return (math.exp(log_ratio) - 1.0) * 100.0 if math.isfinite(log_ratio) else None


def verdict(metric: str, change_pct: Optional[float], ci: Optional[Sequence[float]], min_effect: float) -> str:
    """`slower`, `faster` or `no change`: a change under min_effect, or an interval across zero, is no change."""
    if change_pct is None or ci is None or None in ci or abs(change_pct) < min_effect * 100.0:
        return "no change"
    if ci[0] > 0 or ci[1] < 0:
        up = ci[0] > 0
        return ("faster" if up else "slower") if metric == "rps" else ("slower" if up else "faster")
    return "no change"


def _bench_noise(la: np.ndarray, lb: np.ndarray) -> float:
    """Half-width (log units) of the difference a second bench of each side could show: t x sqrt(s_A^2 + s_B^2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, la.size + lb.size - 2)) * math.sqrt(la.var(ddof=1) + lb.var(ddof=1))


def _widened(diffs: np.ndarray, blocks: tuple[list[dict], list[dict]], metric: str) -> tuple[float, float, float]:
    """(low, high) of the log change: the bootstrap's interval widened by the run-to-run noise, and that noise's
    half-width alone (all in log units)."""
    from scipy import stats

    low, high = float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))
    center = (low + high) / 2.0
    (var_a, df_a), (var_b, df_b) = _run_noise(blocks[0], metric), _run_noise(blocks[1], metric)
    if not (math.isfinite(var_a) and math.isfinite(var_b)):
        return -math.inf, math.inf, math.inf  # no sub-windows to estimate it from: the interval claims nothing
    noise = float(stats.t.ppf(0.975, max(1, df_a + df_b))) * math.sqrt(var_a + var_b)
    half = math.hypot((high - low) / 2.0, noise)
    return center - half, center + half, noise


def shared_machine(rows: Sequence[CompareRow]) -> list[str]:
    """'A: ...' and 'B: ...' for every side whose runs shared the machine, each sentence once."""
    return [f"{side.upper()}: {text}" for side in ("a", "b")
            for text in sorted({t for r in rows for t in r.shared_machine.get(side, [])})]


def grouped(runs: Sequence[Run]) -> dict[tuple[str, str, float], list[Run]]:
    """The runs of each (protocol, payload, level), in the order measured."""
    groups: dict[tuple[str, str, float], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.protocol, run.payload, run.level), []).append(run)
    return groups


def compare_rows(a: tuple[Path, BenchSummary], b: tuple[Path, BenchSummary], min_effect: float, seed: int = 0,
                 run_noise: bool = True) -> list[CompareRow]:
    """One row per matched (protocol, payload, level) and metric. run_noise=False leaves an interval at what the
    runs alone show (the repeats' Welch interval, or a one-run bootstrap's, which sees only the variation inside
    each run): for comparison in tests."""
    (dir_a, sum_a), (dir_b, sum_b) = a, b
    if sum_a.mode != sum_b.mode:
        raise UsageError(f"A is a {sum_a.mode}-loop bench and B a {sum_b.mode}-loop one: their levels "
                        "(users against rates) do not match")
    groups_a, groups_b = grouped(sum_a.runs), grouped(sum_b.runs)
    common = [key for key in groups_a if key in groups_b]
    if not common:
        raise UsageError(f"A ({dir_a}) and B ({dir_b}) have no protocol, payload and level in common: "
                        f"A has {sorted(groups_a)}, B has {sorted(groups_b)}")
    rng = np.random.default_rng(seed)
    rows = []
    for key in common:
        runs_a, runs_b = groups_a[key], groups_b[key]
        repeats = len(runs_a) >= 2 and len(runs_b) >= 2
        machine_change = speed_change_pct(runs_a, runs_b)
        drift = drift_sentence(machine_change, f"{'REST' if key[0] == 'rest' else 'gRPC'} {runs_b[0].wire}, "
                                               + (f"{key[2]:g}/s" if sum_b.mode == "open" else f"{key[2]:g} users"))
        blocks = None if repeats else ([_blocks(r, dir_a, "A") for r in runs_a], [_blocks(r, dir_b, "B") for r in runs_b])
        for metric in METRICS:
            noise_pct = None
            with np.errstate(divide="ignore", invalid="ignore"):
                la = np.log([_known(r.figure(metric)) for r in runs_a])
                lb = np.log([_known(r.figure(metric)) for r in runs_b])
            if not (np.all(np.isfinite(la)) and np.all(np.isfinite(lb))):
                low = high = change = None
            elif repeats:
                diff = float(lb.mean() - la.mean())
                change = _pct(diff)
                low_log, high_log = _welch(la, lb)
                if run_noise:
                    noise = _bench_noise(la, lb)
                    half = math.hypot((high_log - low_log) / 2.0, noise)
                    low_log, high_log = diff - half, diff + half
                    noise_pct = _pct(noise)
                low, high = _pct(low_log), _pct(high_log)
            else:
                change = _pct(float(lb.mean() - la.mean()))
                diffs = _bootstrap(blocks[1], metric, rng) - _bootstrap(blocks[0], metric, rng)
                diffs = diffs[np.isfinite(diffs)]
                low = high = None
                if diffs.size and run_noise:
                    low_log, high_log, noise = _widened(diffs, blocks, metric)
                    low, high = _pct(low_log), _pct(high_log)
                    noise_pct = _pct(noise)
                elif diffs.size:
                    low, high = _pct(float(np.percentile(diffs, 2.5))), _pct(float(np.percentile(diffs, 97.5)))
            ci = None if low is None or high is None else (round(low, 2), round(high, 2))
            rows.append(CompareRow(
                protocol=key[0], payload=key[1], wire=runs_a[0].wire, level=key[2], metric=metric,
                a=float(np.exp(la.mean())) if np.all(np.isfinite(la)) else None,
                b=float(np.exp(lb.mean())) if np.all(np.isfinite(lb)) else None,
                change_pct=None if change is None else round(change, 2), ci95_pct=ci,
                verdict=verdict(metric, change, ci, min_effect),
                method="repeats" if repeats else ("block bootstrap + run-to-run noise" if run_noise
                                                  else "block bootstrap"),
                run_noise_pct=None if noise_pct is None else round(noise_pct, 2), repeats=(len(runs_a), len(runs_b)),
                shared_machine={"a": shared_sentences(runs_a),
                                "b": shared_sentences(runs_b) + ([drift] if drift else [])},
                valid=all(r.valid for r in runs_a + runs_b),
                machine_change_pct=None if machine_change is None else round(machine_change, 1)))
    return rows


def _known(value: Optional[float]) -> float:
    """A figure, NaN when the run has none (null in its summary.json: no request answered)."""
    return math.nan if value is None else value


# ------------------------------------------------------------------------ output
