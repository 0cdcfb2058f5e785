"""What the rest of the machine did during a run's window, from the recorder's host figures: said in words where
it was enough to move a second run of the same setup."""
from __future__ import annotations

from typing import Sequence

from loadtests.drive.recorder import DISTURBED_PERCENT


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
