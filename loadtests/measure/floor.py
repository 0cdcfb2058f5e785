"""The protocol floor (`make bench FLOOR=1`): what the protocol and codec cost with no model to speak of.

The floor model has the spec's input settings and signatures (decode, resize and preprocessing in the graph,
`probabilities` with as many classes as the real model) and an almost free head (exporter.builtin_models:
protocol_floor). It is exported into the report directory, served on its own free ports and run through the
same sweep; each protocol, payload and level's floor is then reported beside the real model's figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from exporter.describe import read_meta_graphs
from loadtests.measure import run, session
from server.model import signatures_of
from server.process import free_port
from spec import contract as c
from spec.errors import HarnessError
from spec.schema import BuilderSource, Spec

FLOOR_FUNCTION = "exporter.builtin_models:protocol_floor"
FLOOR_SUFFIX = "_floor"


def output_classes(version_dir: Path) -> int:
    """How many probabilities the exported model returns per image (its `probabilities` output's last dim)."""

    for meta_graph in read_meta_graphs(version_dir):
        for signature in signatures_of(meta_graph).values():
            output = signature.outputs.get(c.OUTPUT)
            if output is not None and output.shape and output.shape[-1] > 0:
                return int(output.shape[-1])
    raise HarnessError(f"{version_dir}: no signature has a '{c.OUTPUT}' output with a known class count, so the "
                       "protocol floor cannot mirror it; export the model with this harness's signatures "
                       f"({', '.join(c.SIGNATURE_KINDS)}) or run without FLOOR")


def floor_spec(spec: Spec, classes: int, base_path: Path) -> Spec:
    """The spec with the floor model in place of its own: same input settings, signatures and serving settings,
    exported under `base_path`, served on free loopback ports, and nothing else served beside it."""

    model = spec.model.model_copy(update={
        "source": BuilderSource(kind="builder", function=FLOOR_FUNCTION, args={"classes": classes}),
        "outputs": "probabilities"})
    export = spec.export.model_copy(update={"base_path": base_path, "version": "auto", "overwrite": False})
    grpc_port = free_port(spec.serving.host)
    rest_port = free_port(spec.serving.host)
    while rest_port == grpc_port:
        rest_port = free_port(spec.serving.host)
    serving = spec.serving.model_copy(update={"grpc_port": grpc_port, "rest_port": rest_port, "also_serve": ()})
    floor = spec.model_copy(update={"name": spec.name + FLOOR_SUFFIX, "model": model, "export": export,
                                    "serving": serving})
    floor._companions = ()
    return floor


def run_floor(spec: Spec, version_dir: Path, run_dir: Path, steps: Sequence, backend: Optional[str], generators,
              log: Callable[[str], None]) -> dict:
    """Export, serve, check and sweep the floor model; its runs and facts for summary.json's `floor`."""

    classes = output_classes(version_dir)
    floor = floor_spec(spec, classes, run_dir / "floor" / "models")
    log(f"protocol floor: {floor.name}, the same signatures and {spec.model.input.height}x"
        f"{spec.model.input.width}x{spec.model.input.channels} preprocessing with an almost free head "
        f"({classes} classes), through the same {len(steps)} runs")
    payloads = tuple(dict.fromkeys(s.payload for s in steps))
    floor = floor.model_copy(update={"benchmark": floor.benchmark.model_copy(update={"payloads": payloads})})
    with session.session(floor, log, backend, generators, run_dir=run_dir / "floor") as current:
        results = run.sweep(steps, current.target, current.run_dir, current.per_request, current.payloads.sizes, log,
                            server_gone=current.server_gone, rules=current.rules)
    if current.server_died:
        session.report_server_death(current, len(results), len(steps), during="floor sweep")
    return {"model": floor.name, "classes": classes, "function": FLOOR_FUNCTION,
            "model_version_dir": str(current.version_dir), "report_dir": str(current.run_dir),
            "server_died": current.server_died, "correctness": current.checked, "runs": results}


def beside(runs: Sequence[dict], floor_runs: Sequence[dict]) -> list[dict]:
    """Each real run next to the floor run of the same protocol, payload and level."""
    floors = {(r["protocol"], r["payload"], r["level"]): r for r in floor_runs}
    rows = []
    for r in runs:
        f = floors.get((r["protocol"], r["payload"], r["level"]))
        if f is None:
            continue
        share = f["mean_ms"] / r["mean_ms"] if r.get("mean_ms") and f.get("mean_ms") is not None else None
        rows.append({"protocol": r["protocol"], "wire": r["wire"], "payload": r["payload"], "level": r["level"],
                     "mode": r["mode"], "users": r["users"], "model_p50_ms": r["p50_ms"], "floor_p50_ms": f["p50_ms"],
                     "model_mean_ms": r["mean_ms"], "floor_mean_ms": f["mean_ms"], "floor_share": share,
                     "model_rps": r["rps"], "floor_rps": f["rps"], "floor_valid": f["valid"],
                     "floor_outside_server_ms": (f.get("breakdown") or {}).get("outside_server_ms"),
                     "floor_server_overhead_ms": (f.get("breakdown") or {}).get("server_overhead_ms"),
                     "floor_model_ms": (f.get("breakdown") or {}).get("model_ms")})
    return rows
