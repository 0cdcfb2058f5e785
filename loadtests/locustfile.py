"""Locust entry: `locust -f loadtests/locustfile.py` (web UI) or one headless step of `make bench`.

The only module that imports Locust, which monkey-patches the standard library on import; gRPC is
then made gevent-safe before any channel exists, or every gRPC user would block the others.

Custom arguments (shown in the web UI): --spec, --model-name, --rest-url, --grpc-target, --payload.
Hidden ones used by the bench runner: --payload-file, --samples-out, --measure, --server-pid.
With --master / --worker, loadtests/distributed.py carries payloads, the window and the samples between them.
"""
from __future__ import annotations

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

from loadtests.distributed import MasterSide, WorkerSide  # noqa: E402
from loadtests.payloads import PAYLOADS, PayloadSet  # noqa: E402
from loadtests.recorder import Recorder, write_samples  # noqa: E402
from loadtests.users import GrpcUser, LoadContext, RestUser  # noqa: E402

__all__ = ["RestUser", "GrpcUser"]
DEFAULT_SPEC = "specs/mobilenet_v2.yaml"


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="model spec (YAML): model name, ports, images")
    parser.add_argument("--model-name", default="", help="model to call (default: the spec's name)")
    parser.add_argument("--rest-url", default="", help="REST base URL (default: http://127.0.0.1:<serving.rest_port>)")
    parser.add_argument("--grpc-target", default="", help="gRPC host:port (default: 127.0.0.1:<serving.grpc_port>)")
    parser.add_argument("--payload", default="image_b64", choices=list(PAYLOADS),
                       help="image_b64: JPEG bytes; tensor_row / tensor_columnar: float tensor JSON (gRPC: tensor_content)")
    parser.add_argument("--payload-file", default="", include_in_web_ui=False,
                       help="prepared payloads (.npz); default: built or taken from the spec's cache")
    parser.add_argument("--samples-out", default="", include_in_web_ui=False,
                       help="write every measured sample to this .npz when Locust quits")
    parser.add_argument("--measure", default="", include_in_web_ui=False,
                       help="WARMUP,DURATION in seconds: reset stats after warm-up, quit after the window")
    parser.add_argument("--server-pid", type=int, default=0, include_in_web_ui=False,
                       help="pid of the model server, to report its CPU use over the window")


def _load_payloads(options) -> PayloadSet:
    if options.payload_file:
        return PayloadSet.load(Path(options.payload_file))
    from spec.loader import load_spec
    from exporter.export import latest_version_dir
    from loadtests.payloads import load_or_build

    spec = load_spec(Path(options.spec))
    version_dir = latest_version_dir(spec)
    if version_dir is None:
        raise SystemExit(f"no exported version of {spec.name} under {spec.model_dir}: run make export SPEC={options.spec}")
    return load_or_build(spec, version_dir)[0]


def _endpoints(options) -> tuple[str, str]:
    """(REST URL, gRPC target): the options, or the spec's ports on 127.0.0.1 where they are blank."""
    if options.rest_url and options.grpc_target:
        return options.rest_url.rstrip("/"), options.grpc_target
    from spec.errors import SpecError
    from spec.loader import load_spec
    try:
        serving = load_spec(Path(options.spec)).serving
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
                          grpc_target=grpc_target, payloads=payloads)
        ctx.rest_bodies = [payloads.rest_body(ctx.payload, i) for i in range(len(payloads))]
        if any(issubclass(cls, GrpcUser) for cls in environment.user_classes):
            ctx.grpc_requests = [payloads.grpc_request(ctx.payload, i, ctx.model) for i in range(len(payloads))]
        RestUser.host = environment.host or ctx.rest_url
        environment.loadtest = ctx
        ready.set()
        if isinstance(cluster, WorkerSide):
            cluster.announce_ready()

    if isinstance(cluster, WorkerSide):
        cluster.when_payloads(render)
    else:
        render(_cached_payloads(environment))


@events.init.add_listener
def _init(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    runner = environment.runner
    recorder = environment.recorder = Recorder(environment, server_pid=options.server_pid or None)
    master = isinstance(runner, MasterRunner)
    if master:
        environment.cluster = MasterSide(
            environment, lambda: Path(options.payload_file).read_bytes() if options.payload_file
            else _cached_payloads(environment).to_bytes())
    elif isinstance(runner, WorkerRunner):
        environment.cluster = WorkerSide(environment, recorder)
    else:
        RestUser.host = _endpoints(options)[0]  # the class picker shows the spec's real REST address
    if not master and any(issubclass(cls, GrpcUser) for cls in environment.user_classes or ()):
        # the serving protos import TensorFlow (seconds): pay it at start-up, not when a swarm starts
        from tensorflow_serving.apis import predict_pb2  # noqa: F401
    if options.measure:
        warmup, duration = (float(x) for x in options.measure.split(","))

        @environment.events.spawning_complete.add_listener
        def _window(user_count, **_kw) -> None:
            def begin() -> None:
                runner.stats.reset_all()  # Locust's own CSV/HTML then cover the window only
                recorder.begin_window()
                if master:
                    environment.cluster.begin_window()

            def end() -> None:
                recorder.end_window()
                if master:
                    environment.worker_samples = environment.cluster.end_window()
                runner.quit()

            def schedule() -> None:
                if master:  # workers render their requests after the swarm starts: wait until all can send
                    environment.cluster.wait_ready()
                gevent.spawn_later(warmup, begin)
                gevent.spawn_later(warmup + duration, end)

            gevent.spawn(schedule)

    @environment.events.quitting.add_listener
    def _save(**_kw) -> None:
        if not options.samples_out:
            return
        if master:
            parts = getattr(environment, "worker_samples", None)
            if parts:  # none at all: no samples file, and the bench reports the step's log
                window = recorder.window[1] - recorder.window[0] if recorder.window else None
                write_samples(Path(options.samples_out), parts, recorder.server_cpu_percent, time.time(), window)
        elif not isinstance(runner, WorkerRunner):
            recorder.save(Path(options.samples_out), time.time())
