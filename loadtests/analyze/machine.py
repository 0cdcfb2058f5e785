"""What the rest of the machine did during a run's window, from the recorder's host figures: said in words where
it was enough to move a second run of the same setup."""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

from loadtests.drive.recorder import DISTURBED_PERCENT

# a change in the machine's speed (its time for a fixed workload, timed while each run goes on: SpeedProbe) that
# the bench and compare report: a virtual machine here was seen to switch between two speeds about 28% apart, for
# seconds to minutes at a time, with nothing of its own running; repeats of one digits run on a steady stretch
# differed by up to about 10%
DRIFT_PERCENT = 15.0


def machine_fields(meta: dict) -> dict:
    """What the rest of the machine did during the window (% of one core): all processes' CPU, the share of other
    work (not the generator's nor the server's), time stolen by the hypervisor, time the cgroup was throttled; and
    `shared_machine`, a sentence for each over DISTURBED_PERCENT. A run on a shared machine stays valid (its own
    figures hold), but a second run of the same setup may land elsewhere, so compare and the report say so."""
    fields = {key: meta.get(key) for key in ("host_cpu_percent", "other_cpu_percent", "steal_percent",
                                             "throttled_percent")}
    said = {"other_cpu_percent": "other processes used {:.0f}% of a core",
            "steal_percent": "the hypervisor took {:.0f}% of a core from this machine",
            "throttled_percent": "the CPU quota throttled this cgroup for {:.0f}% of the window"}
    fields["shared_machine"] = [text.format(fields[key]) for key, text in said.items()
                                if fields[key] is not None and fields[key] > DISTURBED_PERCENT]
    return fields


def shared_sentences(runs: Sequence[dict]) -> list[str]:
    """How these runs shared their machine with other work (machine_fields), each sentence once."""
    return sorted({text for run in runs for text in run.get("shared_machine") or []})


def speed_change_pct(runs_a: Sequence, runs_b: Sequence) -> Optional[float]:
    """How much longer (+) or shorter (-) the fixed workload took during B's runs than during A's (the same cell),
    in % of A's (the medians of the runs' `machine_probe_ms`); None when a run does not have it (a summary from
    before, or a run too short to time)."""
    a = [r.get("machine_probe_ms") for r in runs_a]
    b = [r.get("machine_probe_ms") for r in runs_b]
    if not a or not b or any(v is None or v <= 0 for v in a + b):
        return None
    return 100.0 * (statistics.median(b) / statistics.median(a) - 1.0)


def drift_sentence(change_pct: Optional[float], cell: str) -> Optional[str]:
    """What B's side says when its machine ran the fixed workload more than DRIFT_PERCENT slower or faster than A's
    during the runs of `cell` (None: it did not)."""
    if change_pct is None or abs(change_pct) <= DRIFT_PERCENT:
        return None
    how = f"{change_pct:.0f}% slower" if change_pct > 0 else f"{-change_pct:.0f}% faster"
    return f"the machine ran a fixed CPU workload {how} than during A's runs ({cell})"


def mark_slower_runs(runs: Sequence[dict]) -> None:
    """Add to `shared_machine` of each run during which the machine ran the fixed workload more than DRIFT_PERCENT
    slower than during the quickest repeat of the same protocol, payload and level (the same load, so the same
    contention from the run itself): the repeats were not measured on the same machine, though no process of its
    own was busier. A bench written again says it once."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run.get("protocol"), run.get("payload"), run.get("level")), []).append(run)
    for group in groups.values():
        probes = [r.get("machine_probe_ms") for r in group if (r.get("machine_probe_ms") or 0) > 0]
        for run in group:
            said = [text for text in run.get("shared_machine") or [] if not text.endswith(_SLOWER_RUN)]
            probe = run.get("machine_probe_ms")
            slower = 100.0 * (probe / min(probes) - 1.0) if probe and len(probes) > 1 else 0.0
            if slower > DRIFT_PERCENT:
                said.append(f"the machine ran a fixed CPU workload {slower:.0f}% slower{_SLOWER_RUN}")
            if said or "shared_machine" in run:
                run["shared_machine"] = said


_SLOWER_RUN = " during this run than during its quickest repeat"
