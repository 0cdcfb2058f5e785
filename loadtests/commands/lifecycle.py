"""`make lifecycle`: what happens around serving, measured on the spec's model. Its part today: the cold start (a
fresh server, again and again, with the export's warmup records and with a copy of the export without them), to
lifecycle.json, lifecycle.html and a history row, gated by lifecycle.thresholds."""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path
from typing import Callable, Optional

from deploy.base import already_serving
from deploy.deployment import deployment_for, preflight
from exporter.export import ensure_exported
from loadtests.analyze import resultsdb
from loadtests.measure import coldstart
from loadtests.measure.payloadsets import load_or_build, payload_plan
from loadtests.measure.session import (EXIT_OK, EXIT_THRESHOLD, Overrides, apply_overrides, new_run_dir, point_latest,
                                       provenance, with_monitoring)
from loadtests.report import lifecyclepage
from spec import lifecycle as rules
from spec.errors import UsageError, program, run_command
from spec.loader import load_spec
from spec.results import ColdStartVariant, LifecycleResult
from spec.schema import Spec

AS_EXPORTED, WITHOUT_WARMUP = "as exported", "without warmup records"


def warmup_verdict(records: Optional[int], variants: list[ColdStartVariant]) -> dict:
    """Whether the warmup ran, from the server's own metrics, in words: `used` (True, False, or None when the
    export has no warmup file) and `text`."""
    exported = next(v for v in variants if v.name == AS_EXPORTED)
    runs = [s.get("warmup_runs", 0) for s in exported.starts]
    read = [s.get("warmup_records_read") for s in exported.starts]
    if not records:
        return {"used": None, "records": 0, "short": "not measured (the export has no warmup records)",
                "text": "the export has no warmup records "
                "(assets.extra/tf_serving_warmup_requests), so only the export as it is was started; "
                "export.warmup: true writes them at export time"}
    if not all(runs):
        return {"used": False, "records": records, "short": "NOT USED", "text": (
            f"NOT USED: the export has {records} warmup records, but the server's model_warmup_latency counted "
            f"{sum(runs)} warmup runs in {len(runs)} starts: the server ignored the file (is --enable_model_warmup "
            "false, or is the file not in the served version's assets.extra?)")}
    stray = [v.name for v in variants if v.name != AS_EXPORTED and any(s.get("warmup_runs") for s in v.starts)]
    text = (f"used: the server replayed the export's {records} warmup record{'s' if records != 1 else ''} at "
            "every start "
            f"(model_warmup_latency: one warmup per start"
            + (f"; its log: {read[0]} records read" if read[0] is not None else "") + ")")
    if stray:
        text += f"; but the copy without them warmed up too ({', '.join(stray)}): the server read another file"
    return {"used": True, "records": records, "records_read": read[0], "short": "used", "text": text}


def headline(result_parts: dict, variants: list[ColdStartVariant], backend: str, starts: int) -> str:
    exported = next(v for v in variants if v.name == AS_EXPORTED).median
    text = (f"cold start ({backend}, {starts} start{'s' if starts > 1 else ''} each): AVAILABLE after "
            f"{exported['available_s']:.2f} s, first correct answer after {exported['first_answer_s']:.2f} s; "
            f"first request {exported['first_request_ms']:.1f} ms against a steady p50 of "
            f"{exported['steady_p50_ms']:.1f} ms, {exported['slow_requests']:.0f} slow first requests")
    bare = next((v for v in variants if v.name == WITHOUT_WARMUP), None)
    if bare is not None:
        m = bare.median
        text += (f"; without the warmup records: AVAILABLE after {m['available_s']:.2f} s, first request "
                 f"{m['first_request_ms']:.1f} ms, {m['slow_requests']:.0f} slow")
    if exported.get("memory_peak_mb") is not None:
        text += f"; memory {exported['memory_peak_mb']:.0f} MiB at the first requests' peak"
    return text + f". Warmup: {result_parts['warmup']['short']}"


def lifecycle(spec: Spec, log: Callable[[str], None] = print, backend: Optional[str] = None) -> int:
    """Measure the spec's lifecycle parts; returns the exit code (0, or 6 when a threshold is broken)."""
    settings = spec.lifecycle
    spec = with_monitoring(spec, log)  # the warmup and load figures are the server's own metrics
    backend = backend or spec.serving.backend
    deployment = deployment_for(spec, backend, log)
    preflight(spec, deployment)
    if already_serving(deployment.endpoints):
        raise UsageError(f"lifecycle: '{spec.name}' is already served at {deployment.endpoints.rest_url}: a cold "
                         f"start needs a server of its own; stop it first (make down SPEC={spec.origin}) or "
                         f"choose other ports ({spec.where('serving', 'rest_port')})")
    version_dir = ensure_exported(spec, log)
    plan, names = payload_plan(spec, version_dir, spec.benchmark.payloads)
    payloads, _ = load_or_build(spec, version_dir, names, log, plan=plan)
    payload = names[0]
    run_dir = new_run_dir(spec, "lifecycle")
    records = coldstart.warmup_records(version_dir)
    variants = [(AS_EXPORTED, spec, records is not None)]
    copy_dir = run_dir / ".without-warmup"
    if records:
        base = coldstart.without_warmup(version_dir, copy_dir)
        export = spec.export.model_copy(update={"base_path": base})
        variants.append((WITHOUT_WARMUP, spec.model_copy(update={"export": export}), False))
    log(f"lifecycle: cold start of {spec.name} on the {backend} backend, {settings.repeats} start(s) of "
        f"{' and '.join(name for name, _, _ in variants)}; {settings.first_requests} first requests one at a time "
        f"over gRPC ({payload}); writing to {run_dir}")
    starts: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    described = None
    try:
        for repeat in range(1, settings.repeats + 1):
            for name, variant_spec, _ in variants:
                quiet = log if repeat == 1 and name == AS_EXPORTED else (lambda _line: None)
                started = deployment_for(variant_spec, backend, quiet)
                one = coldstart.one_start(started, payloads, payload, settings, log,
                                          spec.serving.monitoring.path)
                if described is None:
                    described = provenance(spec, version_dir, started, reused=False)
                starts[name].append(one)
                log(f"  start {repeat} {name}: ports open {one['ports_open_s']:.2f} s, AVAILABLE "
                    f"{one['available_s']:.2f} s, first answer {one['first_answer_s']:.2f} s; first request "
                    f"{one['first_request_ms']:.1f} ms, steady p50 {one['steady_p50_ms']:.2f} ms, "
                    f"{one['slow_requests']} slow; warmup runs {one['warmup_runs']}"
                    + (f"; memory {one['memory_peak_mb']:.0f} MiB" if one["memory_peak_mb"] is not None else ""))
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
    typed = [ColdStartVariant(name=name, base_path=str(v.resolve(v.export.base_path)), warmup_file=has_file,
                              starts=tuple(starts[name]), median=coldstart.medians(starts[name]))
             for name, v, has_file in variants]
    verdicts = rules.evaluate(settings.threshold_rules, dict(typed[0].median))
    parts = {"warmup": warmup_verdict(records, typed)}
    result = LifecycleResult(
        model=spec.name, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        report_dir=str(run_dir), backend=backend, parts=settings.parts,
        settings={**settings.model_dump(exclude={"thresholds"}), "thresholds": settings.thresholds,
                  "protocol": "grpc", "payload": payload},
        provenance=described or {}, warmup_records=records, warmup=parts["warmup"], cold_start=tuple(typed),
        thresholds=tuple(verdicts), thresholds_passed=(all(v["passed"] for v in verdicts) if verdicts else None),
        headline=headline(parts, typed, backend, settings.repeats))
    lifecyclepage.write(result, run_dir)
    point_latest(run_dir)
    log(lifecyclepage.terminal(result))
    log(f"\nreport: {run_dir / 'lifecycle.html'}\nresult: {run_dir / 'lifecycle.json'}")
    where = resultsdb.database_url(spec)
    if where is not None:
        resultsdb.record_lifecycle(where, result, run_dir)
        log(f"history: recorded in {resultsdb.display(where)} (make history SPEC={spec.origin})")
    return EXIT_THRESHOLD if result.thresholds_passed is False else EXIT_OK


def with_repeats(spec: Spec, repeats: Optional[str], first_requests: Optional[str]) -> Spec:
    """The spec with --repeats / --first-requests applied to its lifecycle section, validated like the file."""
    from pydantic import ValidationError

    changed = {k: v for k, v in (("repeats", repeats), ("first_requests", first_requests)) if v is not None}
    if not changed:
        return spec
    try:
        section = type(spec.lifecycle).model_validate({**spec.lifecycle.model_dump(), **changed})
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}={changed.get(e['loc'][0])!r}: {e['msg']}"
                             for e in exc.errors())
        raise UsageError(f"command-line override: {problems}") from None
    return spec.model_copy(update={"lifecycle": section})


def main_lifecycle(argv) -> int:
    """`python -m loadtests lifecycle --spec FILE [--repeats 3] [--first-requests 200] [--backend docker]`."""
    parser = argparse.ArgumentParser(
        prog=program("python -m loadtests lifecycle"),
        description="Measure what happens around serving the spec's model: the cold start of a fresh server, with "
                    "the export's warmup records and without them (lifecycle.json, lifecycle.html, a history row).")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML)")
    parser.add_argument("--parts", help=f"what to measure, comma-separated (default: lifecycle.parts; "
                        f"available: {', '.join(rules.PARTS)})")
    parser.add_argument("--repeats", help="fresh starts of each variant (default: lifecycle.repeats, 3)")
    parser.add_argument("--first-requests", help="requests answered one at a time after the model is AVAILABLE "
                        "(default: lifecycle.first_requests, 200)")
    parser.add_argument("--output-dir", help="results go to <dir>/<model>/lifecycle/<timestamp>/ (default: "
                        "benchmark.output_dir)")
    parser.add_argument("--backend", choices=["embedded", "docker"], help="override serving.backend")
    args = parser.parse_args(argv)

    def body() -> int:
        spec = apply_overrides(load_spec(args.spec), Overrides(output_dir=args.output_dir))
        spec = with_repeats(spec, args.repeats, args.first_requests)
        if args.parts is not None:
            parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
            unknown = [p for p in parts if p not in rules.PARTS]
            if unknown or not parts:
                raise UsageError(f"--parts {args.parts!r}: {', '.join(unknown) or 'nothing'} is not a part "
                                 f"make lifecycle measures; available: {', '.join(rules.PARTS)}")
            spec = spec.model_copy(update={"lifecycle": spec.lifecycle.model_copy(update={"parts": parts})})
        return lifecycle(spec, backend=args.backend)

    return run_command(body, interrupted="interrupted: the server this run started has been stopped")
