"""capacity.json and the capacity table in the terminal."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from loadtests.analyze.limits import LIMITS
from loadtests.drive.payloads import GRPC_WIRE
from spec.results import CapacityResult


def write(results: Sequence[dict], out_dir: Path, slo) -> Path:
    """capacity.json: standard JSON, a probe's NaN (a window with no answers) written as null."""
    path = out_dir / "capacity.json"
    path.write_text(CapacityResult.made({"slo": slo.model_dump(), "slo_text": str(slo),
                                         "results": list(results)}).to_json())
    return path


def terminal_table(results: Sequence[dict], slo) -> str:
    """Capacity at the SLO, REST against gRPC, per payload."""

    lines = [f"capacity at {slo} (highest passing open-loop rate, req/s)",
             f"  {'payload (REST / gRPC)':28} | {'REST':>9} | {'gRPC':>9} | {'gRPC/REST':>9}"]
    by = {(r["protocol"], r["payload"]): r for r in results}
    for payload in dict.fromkeys(r["payload"] for r in results):
        rest, grpc = by.get(("rest", payload)), by.get(("grpc", payload))
        ratio = (f"{grpc['capacity_rps'] / rest['capacity_rps']:.2f}x" if rest and grpc and rest["capacity_rps"]
                 else "n/a")
        shown = [f"{r['capacity_rps']:.1f}" if r else "-" for r in (rest, grpc)]
        lines.append(f"  {payload + ' / ' + GRPC_WIRE[payload]:28} | {shown[0]:>9} | {shown[1]:>9} | {ratio:>9}")
    for r in results:
        if r["limited_by"]:
            lines.append(f"  note: {r['protocol']} {r['wire']}: {LIMITS[r['limited_by']]}")
    return "\n".join(lines)
