"""What bounds a capacity search's result: its probe budget, and the words for each `limited_by` that the
terminal, report.html and tune's pages show (a leaf: the search and every renderer read it)."""
from __future__ import annotations

MAX_PROBES = 20
LIMITS = {
    None: "",
    "generator": "a lower bound: the load generator could not keep the schedule above it (add WORKERS)",
    "slo": "the SLO is out of reach even at a trickle of requests",
    "probes": f"the search stopped after {MAX_PROBES} probes before reaching the precision",
    "pruned": "pruned: it missed the SLO at its first probe, already well below the best capacity found",
}
