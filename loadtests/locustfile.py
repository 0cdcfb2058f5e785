"""Locust entry: `locust -f loadtests/locustfile.py` (web UI) or one headless step of `make bench`.

The only module that imports Locust, which monkey-patches the standard library on import; gRPC is
then made gevent-safe before any channel exists, or every gRPC user would block the others.

Custom arguments (shown in the web UI): --spec, --model-name, --rest-url, --grpc-target, --payload, and for an
open-loop test --rate (requests/s; 0 = closed loop), --arrival and --max-in-flight.
Hidden ones used by the bench runner: --payload-file, --samples-out, --measure, --server-pid, --metrics-url,
--seed, --late-tolerance-ms, --drain.
With --master / --worker, loadtests/drive/distributed.py carries payloads, the window and the samples between them.
"""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import locust  # noqa: F401  (monkey-patches first)
from grpc.experimental import gevent as grpc_gevent

if os.environ.get("LOADTESTS_BLOCKING_GRPC") != "1":  # set only by benchmarks/grpc_concurrency.py, to show the cost
    grpc_gevent.init_gevent()


import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from locust import events  # noqa: E402
from locust import runners as locust_runners  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

# Locust drops a worker that misses 3 one-second heartbeats and moves its users to the others mid-window. On a
# loaded machine (the server on the same cores) a worker's loop can be starved that long while it still sends:
# tolerate 30 s, so a measured window keeps every worker's users and samples. (Locust has no option for it.)
locust_runners.HEARTBEAT_LIVENESS = 30

from loadtests.drive.distributed import SAMPLES_WAIT_S as distributed_samples_wait  # noqa: E402
from loadtests.drive.distributed import MasterSide, WorkerSide  # noqa: E402
from loadtests.drive.http2 import grpc_message  # noqa: E402
from loadtests.drive.payloads import GRPC_WIRE, PayloadSet  # noqa: E402
from loadtests.drive.profiling import WindowTrace  # noqa: E402
from loadtests.drive.recorder import Recorder, write_samples  # noqa: E402
from loadtests.drive.schedule import ARRIVALS, Schedule  # noqa: E402
from loadtests.drive.servermetrics import Scraper  # noqa: E402
from loadtests.analyze.settling import Window, facts as settled_facts, measure_until_settled  # noqa: E402
from loadtests.analyze.validity import Rules  # noqa: E402
from loadtests.drive.openloop import OpenLoop  # noqa: E402
from loadtests.drive.users import GrpcUser, LoadContext, RestUser, render_rest_request  # noqa: E402
from spec.errors import SpecError  # noqa: E402

__all__ = ["RestUser", "GrpcUser"]
DEFAULT_SPEC = "specs/mobilenet_v2.yaml"


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="model spec (YAML): model name, ports, images")
    parser.add_argument("--model-name", default="", help="model to call (default: the spec's name)")
    parser.add_argument("--rest-url", default="", help="REST base URL (default: http://127.0.0.1:<serving.rest_port>)")
    parser.add_argument("--grpc-target", default="", help="gRPC host:port (default: 127.0.0.1:<serving.grpc_port>)")
    parser.add_argument("--payload", default="image_b64", choices=list(GRPC_WIRE),
                       help="image_b64: JPEG bytes; tensor_row / tensor_columnar: float tensor JSON (gRPC: tensor_content)")
    parser.add_argument("--payload-file", default="", include_in_web_ui=False,
                       help="prepared payloads (.npz); default: built or taken from the spec's cache")
    parser.add_argument("--samples-out", default="", include_in_web_ui=False,
                       help="write every measured sample to this .npz when Locust quits")
    parser.add_argument("--measure", default="", include_in_web_ui=False,
                       help="WARMUP,DURATION[,MAX_DURATION] in seconds: reset stats after warm-up, then measure at "
                       "least DURATION and on, a third of DURATION at a time, until the last three thirds agree "
                       "(at most MAX_DURATION, default DURATION), then quit")
    parser.add_argument("--stability", default="10,50", include_in_web_ui=False,
                       help="PERCENT,PERCENTILE: the last three sub-windows agree when throughput and this percentile "
                       "stay within PERCENT of their mean, or within sampling noise")
    parser.add_argument("--fail-over", default="", include_in_web_ui=False,
                       help="PERCENTILE,MS (a capacity probe's SLO): stop measuring an unsettled run once this "
                       "percentile of each of the last three sub-windows is above MS (it fails however long it runs)")
    parser.add_argument("--server-pid", type=int, default=0, include_in_web_ui=False,
                       help="pid of the model server, to report its CPU use over the window")
    parser.add_argument("--profile-into", default="", include_in_web_ui=False,
                        help="DIR: trace the server over the measured window (tensorflow.ProfilerService on the gRPC "
                        "target) into DIR, in TensorBoard's layout")
    parser.add_argument("--metrics-url", default="", include_in_web_ui=False,
                       help="the server's Prometheus page, scraped as the window opens and closes")
    parser.add_argument("--grpc-client", default="lean", choices=["lean", "grpcio"],
                        help="gRPC users' client: lean (pre-rendered HTTP/2 frames, a fraction of the CPU per call) "
                        "or grpcio (the official stub; also for a target that needs TLS)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: requests per second over all users and workers, sent on schedule whether "
                        "or not earlier ones have answered (latency from the scheduled time); 0: closed loop")
    parser.add_argument("--arrival", default="poisson", choices=list(ARRIVALS),
                        help="open loop: poisson (random gaps) or constant (evenly spaced) arrivals")
    parser.add_argument("--max-in-flight", type=int, default=1000,
                        help="open loop: cap on requests in flight (over all workers); beyond it requests start late")
    parser.add_argument("--seed", type=int, default=0, include_in_web_ui=False, help="open loop: the schedule's seed")
    parser.add_argument("--late-tolerance-ms", type=float, default=5.0, include_in_web_ui=False,
                        help="open loop: a request starting later than this after its due time is late")
    parser.add_argument("--drain", type=float, default=10.0, include_in_web_ui=False,
                        help="open loop: seconds the requests due in the window may still answer after it")


def _spec(options):
    # deferred: the spec schema (pydantic, about 0.2 s per process) serves only a test started from the web UI; a
    # bench's Locust processes get the payload file and the endpoints on their command line
    from spec.loader import load_spec

    return load_spec(Path(options.spec))


def _load_payloads(options) -> PayloadSet:
    if options.payload_file:
        return PayloadSet.load(Path(options.payload_file))
    # deferred: without --payload-file (a test from the web UI) the payloads are built from the export, which
    # needs the exporter and measure rooms; the worker processes of a bench never load them
    from exporter.export import latest_version_dir
    from loadtests.measure.payloadsets import load_or_build

    spec = _spec(options)
    version_dir = latest_version_dir(spec)
    if version_dir is None:
        raise SystemExit(f"no exported version of {spec.name} under {spec.model_dir}: run make export SPEC={options.spec}")
    return load_or_build(spec, version_dir)[0]


def _endpoints(options) -> tuple[str, str]:
    """(REST URL, gRPC target): the options, or the spec's ports on 127.0.0.1 where they are blank."""
    if options.rest_url and options.grpc_target:
        return options.rest_url.rstrip("/"), options.grpc_target
    try:
        serving = _spec(options).serving
    except SpecError as exc:
        raise SystemExit(f"--spec: {exc}") from None
    return ((options.rest_url or f"http://127.0.0.1:{serving.rest_port}").rstrip("/"),
            options.grpc_target or f"127.0.0.1:{serving.grpc_port}")


def _cached_payloads(environment) -> PayloadSet:
    options = environment.parsed_options
    cached = getattr(environment, "_payload_cache", {})
    key = options.payload_file or options.spec
    if key not in cached:
        cached[key] = _load_payloads(options)
        environment._payload_cache = cached
    return cached[key]


@events.test_start.add_listener
def _prepare(environment, **_kwargs) -> None:
    """Render every request before any user starts: nothing is encoded inside the timed loop.

    A master runs no users. A worker renders once the master's payloads are here; its users wait for that.
    """
    recorder = getattr(environment, "recorder", None)
    if recorder is not None:
        recorder.reset()
    cluster = getattr(environment, "cluster", None)
    if isinstance(cluster, MasterSide):
        return
    ready = environment.loadtest_ready = Event()

    def render(payloads: PayloadSet) -> None:
        options = environment.parsed_options
        rest_url, grpc_target = _endpoints(options)
        ctx = LoadContext(model=options.model_name or payloads.model, payload=options.payload, rest_url=rest_url,
                          grpc_target=grpc_target, payloads=payloads, open_loop=_open_loop(options))
        ctx.rest_bodies = [payloads.rest_body(ctx.payload, i) for i in range(len(payloads))]
        if any(issubclass(cls, GrpcUser) for cls in environment.user_classes):
            ctx.grpc_requests = [payloads.grpc_request(ctx.payload, i, ctx.model).SerializeToString()
                                 for i in range(len(payloads))]
            if options.grpc_client == "lean":
                ctx.grpc_messages = [grpc_message(r) for r in ctx.grpc_requests]
        RestUser.host = environment.host or ctx.rest_url
        rendered = [render_rest_request(RestUser.host, ctx.rest_path, body) for body in ctx.rest_bodies]
        ctx.rest_requests = rendered if all(r is not None for r in rendered) else []
        environment.loadtest = ctx
        gc.freeze()  # what is alive now (the rendered requests, Locust) is never collected: no long pauses mid-run
        ready.set()
        if isinstance(cluster, WorkerSide):
            cluster.announce_ready()

    if isinstance(cluster, WorkerSide):
        cluster.when_payloads(render)
    else:
        render(_cached_payloads(environment))


def _open_loop(options):
    """The run's open-loop schedule (its share is set when it starts), or None for a closed-loop run."""
    if not options.rate:
        RestUser.concurrency = 10  # FastHttpUser's default
        return None
    if options.rate < 0 or options.max_in_flight < 1:
        raise ValueError(f"--rate must be positive and --max-in-flight at least 1 (got {options.rate}, "
                         f"{options.max_in_flight})")
    RestUser.concurrency = options.max_in_flight  # each REST user's connection pool: as many as may be in flight
    return OpenLoop(Schedule(options.rate, options.arrival, options.seed), options.max_in_flight,
                    options.late_tolerance_ms / 1000.0)


def _start_schedule(environment, share: int = 0, shares: int = 1) -> None:
    ctx = getattr(environment, "loadtest", None)
    loop = ctx and ctx.open_loop
    if loop is not None and not loop.started.is_set():
        loop.resize(-(-loop.max_in_flight // shares))  # this process's share of the cap
        loop.start(share, shares)


def _begin_window(environment, recorder: Recorder) -> None:
    """Measure from now; note the requests-outstanding integral, for the Little's law check at the end."""
    recorder.begin_window(outstanding=_outstanding(environment))


def _outstanding(environment):
    ctx = getattr(environment, "loadtest", None)
    return ctx.area_now if ctx is not None else None


def _end_window(environment, recorder: Recorder, drain_s: float, span=None, settled=None) -> None:
    """Close the window on the span of sub-windows its figures come from. Open loop: keep recording until the
    requests due in it have answered (or drain_s)."""
    ctx = getattr(environment, "loadtest", None)
    loop = ctx and ctx.open_loop
    recorder.end_window(keep_recording=loop is not None, span=span, settled=settled)
    if loop is None or recorder.window is None:
        recorder.stop()
        return
    closed_at = recorder.window[1]
    deadline = time.perf_counter() + drain_s
    while loop.unanswered_before(closed_at) and time.perf_counter() < deadline:
        gevent.sleep(0.02)
    recorder.add_unanswered(loop.unanswered_before(closed_at),
                            f"no answer within {drain_s:g}s after the measured window closed")
    recorder.stop()


def _boundary(environment, recorder: Recorder, grace_s: float) -> dict:
    """Mark a sub-window boundary; return the samples since the last one, once the requests due before it have
    answered (open loop; at most grace_s), so whether the run has settled is judged on complete sub-windows."""
    mark = recorder.mark()
    ctx = getattr(environment, "loadtest", None)
    loop = ctx and ctx.open_loop
    deadline = mark.wall + grace_s
    while loop is not None and loop.unanswered_before(mark.wall) and time.perf_counter() < deadline:
        gevent.sleep(0.01)
    return recorder.take_new()


def _grace_s(window: Window, drain_s: float) -> float:
    return min(drain_s, window.width_s / 2.0)


@events.test_stopping.add_listener  # before Locust stops the users: the driver's task then ends by itself
def _stop_open_loop(environment, **_kwargs) -> None:
    ctx = getattr(environment, "loadtest", None)
    if ctx is not None and ctx.open_loop is not None:
        ctx.open_loop.stop()


@events.init.add_listener
def _init(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    runner = environment.runner
    scraper = Scraper(options.metrics_url or None) if not isinstance(runner, WorkerRunner) else None
    recorder = environment.recorder = Recorder(environment, server_pid=options.server_pid or None, scraper=scraper)
    master = isinstance(runner, MasterRunner)
    if master:
        environment.cluster = MasterSide(
            environment, lambda: Path(options.payload_file).read_bytes() if options.payload_file
            else _cached_payloads(environment).to_bytes())
    elif isinstance(runner, WorkerRunner):
        environment.cluster = WorkerSide(environment, recorder, begin=lambda: _begin_window(environment, recorder),
                                         end=lambda span, settled: _end_window(environment, recorder, options.drain,
                                                                               span, settled),
                                         boundary=lambda grace_s: _boundary(environment, recorder, grace_s),
                                         start_schedule=lambda k, n: _start_schedule(environment, k, n))
    else:
        RestUser.host = _endpoints(options)[0]  # the class picker shows the spec's real REST address
    measure = [float(x) for x in options.measure.split(",")] if options.measure else None
    if measure and len(measure) == 2:
        measure.append(measure[1])  # no maximum: measure exactly the duration (still judged by sub-windows)

    @environment.events.spawning_complete.add_listener
    def _go(user_count, **_kw) -> None:
        """Every user is spawned: start the open-loop schedule (every worker's share at once), then the window."""
        if isinstance(runner, WorkerRunner):
            return  # a worker waits for its master's messages

        def begin() -> None:
            runner.stats.reset_all()  # Locust's own CSV/HTML then cover the measured time only
            if options.profile_into:  # the server's trace opens and closes with the window
                environment.profile = WindowTrace(_endpoints(options)[1], Path(options.profile_into),
                                                  Path(options.samples_out).stem or "window", measure[2])
                environment.profile.begin()
            _begin_window(environment, recorder)
            if master:
                environment.cluster.begin_window()

        def boundary(window: Window):
            grace_s = _grace_s(window, options.drain)
            def at(number: int) -> tuple[float, list[dict]]:
                """The instant this process marked the boundary, and the samples recorded since the last one."""
                if master:  # every worker marks the boundary too and sends what it recorded since the last one
                    marked = recorder.mark().wall
                    return marked, environment.cluster.boundary(number, grace_s)
                part = _boundary(environment, recorder, grace_s)
                return recorder.marks[-1].wall, [part]
            return at

        def end(span, settled: dict) -> None:
            if getattr(environment, "profile", None) is not None:
                environment.profile.end()
            if master:  # its window (and the server's CPU) ends now; the workers close (and drain) theirs
                recorder.end_window(span=span, settled=settled)
                environment.worker_samples = environment.cluster.end_window(
                    span, settled, wait_s=options.drain + distributed_samples_wait)
            else:
                _end_window(environment, recorder, options.drain, span, settled)
            runner.quit()

        def run() -> None:
            if master:  # workers render their requests after the swarm starts: wait until all can send
                environment.cluster.wait_ready()
                if options.rate:
                    environment.cluster.start_schedule()
            else:
                _start_schedule(environment)
            if not measure:
                return
            warmup, duration, max_duration = measure
            gevent.sleep(warmup)
            begin()
            window = Window(duration, max(duration, max_duration))
            percent, percentile = (float(x) for x in options.stability.split(","))
            fail_over = tuple(float(x) for x in options.fail_over.split(",")) if options.fail_over else None
            settled, over_slo = measure_until_settled(
                window, Rules(stability_percent=percent, judged_percentile=percentile), bool(options.rate),
                recorder.marks[0].wall, boundary(window), fail_over=fail_over)
            end((settled.first, settled.count), settled_facts(window, settled, over_slo))

        gevent.spawn(run)

    @environment.events.quitting.add_listener
    def _save(**_kw) -> None:
        if not options.samples_out:
            return
        if master:
            parts = getattr(environment, "worker_samples", None)
            if parts:  # none at all: no samples file, and the bench reports the step's log
                window = recorder.window[1] - recorder.window[0] if recorder.window else None
                write_samples(Path(options.samples_out), parts, recorder.server_cpu_percent, time.time(), window,
                              extra=_run_facts(options, recorder, environment), host=recorder.host,
                              own_cpu_percent=recorder.cpu_percent)
        elif not isinstance(runner, WorkerRunner):
            recorder.save(Path(options.samples_out), time.time(), extra=_run_facts(options, recorder, environment))


def _run_facts(options, recorder: Recorder, environment) -> dict:
    """What the samples file says about how the load was offered, and the server's metrics around the window."""
    scrapes = recorder.scraper.facts() if recorder.scraper is not None else {}
    scrapes["settled"] = recorder.settled
    if getattr(environment, "profile", None) is not None:
        scrapes["profile"] = environment.profile.outcome()
    if not options.rate:
        return {"mode": "closed", **scrapes}
    return {**scrapes, "mode": "open", "offered_rps": options.rate, "arrival": options.arrival, "seed": options.seed,
            "max_in_flight": options.max_in_flight, "late_tolerance_ms": options.late_tolerance_ms,
            "drain_s": options.drain}
