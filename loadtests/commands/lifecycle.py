"""`make lifecycle`: what happens around serving, measured on the spec's model, in up to three parts: the cold
start (a fresh server, again and again, with the export's warmup records and with a copy of the export without
them), a version swap under open-loop load (every co-served model watched too), and density (1, 2, ... copies of the
model in one server). To lifecycle.json, lifecycle.html and a history row, gated by lifecycle.thresholds."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Callable, Optional

from deploy.base import already_serving
from deploy.deployment import deployment_for, preflight
from exporter.export import ensure_exported
from loadtests.analyze import resultsdb
from loadtests.measure import coldstart
from loadtests.measure.density import run_density
from loadtests.measure.openload import check_rate
from loadtests.measure.payloadsets import load_or_build, payload_plan
from loadtests.measure.session import (EXIT_OK, EXIT_THRESHOLD, Overrides, apply_overrides, new_run_dir, point_latest,
                                       provenance, with_monitoring)
from loadtests.measure.swap import check_settings, swap_part, swap_rate
from loadtests.report import lifecyclepage
from spec import lifecycle as rules
from spec.errors import UsageError, program, run_command
from spec.loader import load_spec
from spec.results import LifecycleResult
from spec.schema import Spec


def figures(result_parts: dict) -> dict:
    """The figures lifecycle.thresholds judge, from the parts that ran."""
    out: dict = {}
    variants = result_parts.get("cold_start") or ()
    if variants:
        out.update(variants[0].median)
        out["memory_mb"] = variants[0].median.get("memory_peak_mb")
    swap = result_parts.get("swap")
    if swap:
        models = swap["models"].values()
        out["copy_to_answer_s"] = lifecyclepage.swapped_model(swap).get("copy_to_new_answer_s")
        out["swap_failures"] = sum(m["failures"] for m in models)
        out["swap_spike_ms"] = max(m["spike_ms"] for m in models)
        peaks = [m["peak_p99_ms"] for m in models if m["peak_p99_ms"] is not None]
        out["swap_peak_p99_ms"] = max(peaks) if peaks else None
    density = result_parts.get("density")
    if density:
        out["density_models"] = density["fits"]
        out["memory_per_copy_mb"] = density["per_copy_peak_mb"]
    return out


def lifecycle(spec: Spec, log: Callable[[str], None] = print, backend: Optional[str] = None) -> int:
    """Measure the spec's lifecycle parts; returns the exit code (0, or 6 when a threshold is broken)."""
    settings = spec.lifecycle
    spec = with_monitoring(spec, log)  # the warmup and load figures are the server's own metrics
    backend = backend or spec.serving.backend
    # a rate it cannot offer, or no capacity result to take a share of: said now, before anything is exported
    rate = swap_rate(spec, spec.benchmark.payloads[0]) if "swap" in settings.parts else None
    if "density" in settings.parts:
        check_rate(settings.density.rate, 1, "lifecycle.density.rate")
    deployment = deployment_for(spec, backend, log)
    preflight(spec, deployment)
    if already_serving(deployment.endpoints):
        raise UsageError(f"lifecycle: '{spec.name}' is already served at {deployment.endpoints.rest_url}: make "
                         f"lifecycle starts servers of its own; stop it first (make down SPEC={spec.origin}) or "
                         f"choose other ports ({spec.where('serving', 'rest_port')})")
    version_dir = ensure_exported(spec, log)
    if "swap" in settings.parts:
        check_settings(spec, version_dir)
    plan, names = payload_plan(spec, version_dir, spec.benchmark.payloads)
    payloads, _ = load_or_build(spec, version_dir, names, log, plan=plan)
    payload = names[0]
    run_dir = new_run_dir(spec, "lifecycle")
    log(f"lifecycle: {', '.join(settings.parts)} of {spec.name} on the {backend} backend; writing to {run_dir}")
    parts: dict = {}
    described: dict = {}
    if "cold_start" in settings.parts:
        parts["cold_start"], records, described = coldstart.run_cold_starts(spec, backend, version_dir, payloads,
                                                                            payload, run_dir, log)
        parts["warmup"] = coldstart.warmup_verdict(records, parts["cold_start"])
        parts["warmup_records"] = records
    if "swap" in settings.parts:
        parts["swap"] = swap_part(spec, backend, version_dir, payloads, payload, rate, run_dir, log)
    if "density" in settings.parts:
        parts["density"] = run_density(spec, backend, version_dir, payloads, payload, run_dir, log)
    if not described:
        described = provenance(spec, version_dir, deployment, reused=False)
    verdicts = rules.evaluate(settings.threshold_rules, figures(parts), settings.parts)
    known = [v["passed"] for v in verdicts if v["passed"] is not None]
    result = LifecycleResult(
        model=spec.name, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        report_dir=str(run_dir), backend=backend, parts=settings.parts,
        settings={**settings.model_dump(exclude={"thresholds"}), "thresholds": settings.thresholds,
                  "protocol": "grpc", "payload": payload, "slo": spec.benchmark.slo.model_dump()
                  if spec.benchmark.slo else None},
        provenance=described, warmup_records=parts.get("warmup_records"), warmup=parts.get("warmup", {}),
        cold_start=tuple(parts.get("cold_start", ())), swap=parts.get("swap"), density=parts.get("density"),
        thresholds=tuple(verdicts), thresholds_passed=all(known) if known else None, headline="")
    result = dataclasses.replace(result, headline=lifecyclepage.headline(result))
    lifecyclepage.write(result, run_dir)
    point_latest(run_dir)
    log(lifecyclepage.terminal(result))
    log(f"\nreport: {run_dir / 'lifecycle.html'}\nresult: {run_dir / 'lifecycle.json'}")
    where = resultsdb.database_url(spec)
    if where is not None:
        resultsdb.record_lifecycle(where, result, run_dir)
        log(f"history: recorded in {resultsdb.display(where)} (make history SPEC={spec.origin})")
    return EXIT_THRESHOLD if result.thresholds_passed is False else EXIT_OK


OVERRIDES = (("repeats", "repeats"), ("first_requests", "first_requests"), ("rate", "swap.rate"),
             ("max_models", "density.max_models"), ("memory_limit", "density.memory_limit"))


def with_overrides(spec: Spec, args) -> Spec:
    """The spec with --parts, --repeats, --first-requests, --rate, --max-models and --memory-limit applied to its
    lifecycle section, validated like the file."""
    from pydantic import ValidationError

    values = spec.lifecycle.model_dump()
    given = {tuple(key.split(".")): (f"--{attribute.replace('_', '-')}", getattr(args, attribute))
             for attribute, key in OVERRIDES if getattr(args, attribute) is not None}
    for (*section, name), (_flag, value) in given.items():
        (values[section[0]] if section else values)[name] = value
    if args.swap_compare is not None:
        try:
            values["swap"]["compare"] = rules.parse_settings(args.swap_compare)
        except ValueError as exc:
            raise UsageError(f"--swap-compare {args.swap_compare!r}: {exc}; settings are separated by ';', e.g. "
                             "'num_load_threads=4;warmup=false;file_system_poll_wait_seconds=5'") from None
        given[("swap", "compare")] = ("--swap-compare", args.swap_compare)
    if args.parts is not None:
        values["parts"] = [part.strip() for part in args.parts.split(",") if part.strip()]
        unknown = [part for part in values["parts"] if part not in rules.PARTS]
        if unknown or not values["parts"]:
            raise UsageError(f"--parts {args.parts!r}: {', '.join(unknown) or 'nothing'} is not a part make "
                             f"lifecycle measures; the parts: {', '.join(rules.PARTS)}")
    parts = values["parts"]
    if args.swap_compare is not None and "swap" not in parts:
        raise UsageError(f"--swap-compare compares settings of the swap part, which is not among the parts measured "
                         f"({', '.join(parts)}); add swap to --parts or leave --swap-compare out")
    if not given and args.parts is None:
        return spec
    try:
        section = type(spec.lifecycle).model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = tuple(str(k) for k in error["loc"])
            flag, value = given.get(where[:2]) or given.get(where[:1]) or ("--parts", args.parts)
            problems.append(f"{flag}={value!r}: {error['msg']}")
        raise UsageError(f"command-line override: {'; '.join(problems)}") from None
    return spec.model_copy(update={"lifecycle": section})


def main_lifecycle(argv) -> int:
    """`python -m loadtests lifecycle --spec FILE [--parts cold_start,swap,density] [--repeats 3] ...`."""
    parser = argparse.ArgumentParser(
        prog=program("python -m loadtests lifecycle"),
        description="Measure what happens around serving the spec's model: the cold start of a fresh server (with "
                    "and without the export's warmup records), a version swap under open-loop load, and how many "
                    "copies fit in one server (lifecycle.json, lifecycle.html, a history row).")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--parts", help=f"what to measure, comma-separated (default: lifecycle.parts, all of "
                        f"{', '.join(rules.PARTS)})")
    parser.add_argument("--repeats", help="cold start: fresh starts of each variant (default: lifecycle.repeats, 3)")
    parser.add_argument("--first-requests", help="cold start: requests answered one at a time after the model is "
                        "AVAILABLE (default: lifecycle.first_requests, 200)")
    parser.add_argument("--rate", help="swap: requests per second on each served model, or a share of the "
                        "capacity make capacity found, e.g. 50%% (default: lifecycle.swap.rate, 20)")
    parser.add_argument("--swap-compare", help="swap: settings to run it with too, each on a fresh server, "
                        "separated by ';': num_load_threads=N, file_system_poll_wait_seconds=N, warmup=true|false, "
                        "e.g. 'num_load_threads=4;warmup=false' (default: lifecycle.swap.compare, none)")
    parser.add_argument("--max-models", help="density: the most copies of the model served at once (default: "
                        "lifecycle.density.max_models, 4)")
    parser.add_argument("--memory-limit", help="density: stop adding copies above this memory, e.g. 2GiB (default: "
                        "lifecycle.density.memory_limit, none)")
    parser.add_argument("--output-dir", help="results go to <dir>/<model>/lifecycle/<timestamp>/ (default: "
                        "benchmark.output_dir)")
    parser.add_argument("--backend", choices=["embedded", "docker"], help="override serving.backend")
    args = parser.parse_args(argv)

    def body() -> int:
        spec = apply_overrides(load_spec(args.spec), Overrides(output_dir=args.output_dir))
        return lifecycle(with_overrides(spec, args), backend=args.backend)

    return run_command(body, interrupted="interrupted: the servers this run started have been stopped")
