"""What a `make perf*` / `make reliability` run measured, written where the documentation reads it.

A full run of a measuring target adds its figures to `docs/data/<name>.json` (the last KEPT runs), with the date,
the commit and the machine; the documentation's performance pages render those files at build time
(docs/hooks.py): the last run's table, and the range of each figure over the runs kept, since one run on a noisy
machine is not the whole story. No measured figure is edited by hand into prose. A partial run (`--only`,
`--quick`) prints its figures and saves nothing: a partial set must not replace a full one.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from loadtests.measure.session import cpu_model

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "docs" / "data"
KEPT = 10


@dataclass
class Row:
    what: str
    measured: str  # as shown, e.g. "1.085" or "1/8.2" or "passed"
    goal: str = ""
    met: Optional[bool] = None
    detail: str = ""
    value: Optional[float] = None  # the number behind `measured`, for the range over runs
    fmt: str = ""  # how `value` is shown, e.g. "{:.3f}" or "1/{:.1f}"


@dataclass
class Figures:
    """The figures of one run of one measuring target."""
    name: str  # the data file's name: docs/data/<name>.json
    target: str  # how it is run, e.g. "make perf"
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, value, fmt: str = "{}", goal: str = "", met: Optional[bool] = None,
            detail: str = "") -> None:
        """One figure: `value` a number shown through `fmt`, or a word (e.g. "passed")."""
        number = float(value) if isinstance(value, (int, float)) else None
        self.rows.append(Row(what, fmt.format(value) if number is not None else str(value), goal, met, detail,
                             number, fmt if number is not None else ""))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def save(self, partial: bool = False, directory: Optional[Path] = None) -> Optional[Path]:
        """Write docs/data/<name>.json (unless `partial`); says where, or why not."""
        if partial:
            print(f"a partial run: {self.target}'s figures in docs/data/{self.name}.json are left as they were")
            return None
        directory = Path(directory or os.environ.get("TFSB_FIGURES_DIR") or DATA_DIR)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        run = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "commit": _commit(), "machine": machine(), "rows": [asdict(r) for r in self.rows], "notes": self.notes}
        runs = []
        if path.is_file():
            try:
                runs = json.loads(path.read_text()).get("runs", [])
            except (ValueError, AttributeError):
                runs = []  # an unreadable file is replaced, not merged
        record = {"name": self.name, "target": self.target, "title": self.title, "runs": (runs + [run])[-KEPT:]}
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
        print(f"figures written to {path}")
        return path


def machine() -> dict[str, Any]:
    """CPU model and count, memory, OS and Python: what a reader needs to weigh a figure."""
    cpu = cpu_model()
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2 ** 20, 1)
                break
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": memory_gib,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def _commit() -> Optional[str]:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=REPO,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def render(name: str, directory: Optional[Path] = None) -> str:
    """The Markdown the documentation shows for docs/data/<name>.json: the last run (when, where, its table), and
    each figure's range over the runs kept."""
    path = Path(directory or DATA_DIR) / f"{name}.json"
    if not path.is_file():
        return f"*Not measured in this checkout yet: a full run writes `docs/data/{name}.json`.*\n"
    record = json.loads(path.read_text())
    runs = record["runs"]
    last = runs[-1]
    box = last["machine"]
    memory = f", {box['memory_gib']} GiB" if box.get("memory_gib") else ""
    lines = [f"*Measured by `{record['target']}` on {last['measured_at']}, commit `{last['commit']}`, on "
             f"{box['cpus']} x {box['cpu']}{memory}, {box['os']}, Python {box['python']} "
             f"(`docs/data/{name}.json`, written by that run).*", ""]
    rows = last["rows"]
    goals = any(r["goal"] for r in rows)
    details = any(r["detail"] for r in rows)
    history = len(runs) > 1 and any(r.get("value") is not None for r in rows)
    head = ["what", "measured"] + (["goal", "met"] if goals else []) + \
        ([f"range over the last {len(runs)} runs"] if history else []) + (["detail"] if details else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["what"], f"**{row['measured']}**" if row["goal"] else row["measured"]]
        if goals:
            cells += [row["goal"], {True: "yes", False: "**no**", None: ""}[row["met"]]]
        if history:
            seen = [r["value"] for run in runs for r in run["rows"]
                    if r["what"] == row["what"] and r.get("value") is not None]
            cells.append(f"{row['fmt'].format(min(seen))} to {row['fmt'].format(max(seen))} ({len(seen)} runs)"
                         if len(seen) > 1 else "")
        if details:
            cells.append(row["detail"])
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += [""] + [f"{note}\n" for note in last["notes"]]
    return "\n".join(lines).rstrip() + "\n"
