"""`make reliability`: the embedded server under load and faults; every scenario prints its figures.

1. hot version change: under REST + gRPC load a new version is dropped in, later the old one removed.
2. corrupt version: under load a version that cannot load appears (no load retries, so its END shows at once);
   the serving version keeps answering.
3. graceful stop: SIGTERM under load; requests in flight complete, later ones are refused, exit code 0.
4. overload: batching with a one-batch queue and many clients; the excess is refused at once (UNAVAILABLE).
5. soak: steady load; the server's resident memory after warm-up and at the end.

The load is closed-loop clients in threads (REST b64 and gRPC bytes, a real digits PNG), each request
recorded with its start, end, outcome and, over gRPC, the version that answered. `--quick` shortens every
scenario for the test suite (tests/integration/test_reliability.py); the defaults are the issue's (30 s, 10 min).
Exit status 1 when a scenario's pass condition fails.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks.figures import Figures
from exporter.builtin_models import digits_uint8
from exporter.export import ensure_exported
from exporter.images import encode
from server.process import ServerProcess
from spec import contract as c
from spec.loader import load_spec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Record:
    protocol: str
    started: float
    ended: float
    ok: bool
    version: Optional[int] = None
    error: str = ""


@dataclass
class Load:
    """Closed-loop clients against one server until stop(); every request is recorded."""
    rest_port: int
    grpc_port: int
    image: bytes
    rest_clients: int = 2
    grpc_clients: int = 2
    model: str = "digits_cnn"
    records: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answered: set[int] = set()
        self._threads = [threading.Thread(target=self._rest, daemon=True) for _ in range(self.rest_clients)]
        self._threads += [threading.Thread(target=self._grpc, daemon=True) for _ in range(self.grpc_clients)]

    def __enter__(self) -> "Load":
        """Start every client and return once each has had an answer: the load is on from here."""
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: F401  (imports TF: not in a client)

        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(self._answered) < len(self._threads) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Record]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.records

    def _add(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)
            self._answered.add(threading.get_ident())

    def _rest(self) -> None:
        body = json.dumps({"instances": [{"b64": base64.b64encode(self.image).decode()}]}).encode()
        connection = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=30)
                connection.request("POST", f"/v1/models/{self.model}:predict", body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and len(json.loads(answer)["predictions"][0]) == 10
                error = "" if ok else f"HTTP {response.status}: {answer[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.01)  # a refused connection would otherwise spin
            self._add(Record("REST", started, time.monotonic(), ok, None, error))
        if connection is not None:
            connection.close()

    def _grpc(self) -> None:
        import grpc
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs[c.IMAGE_INPUT].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[self.image],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])))
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = stub.Predict(request, timeout=30)
                    self._add(Record("gRPC", started, time.monotonic(), True, response.model_spec.version.value))
                except grpc.RpcError as exc:
                    self._add(Record("gRPC", started, time.monotonic(), False, None,
                                     f"{exc.code().name}: {exc.details()}"))
                    time.sleep(0.01)


def _summary(records: list[Record]) -> str:
    by = {p: [r for r in records if r.protocol == p] for p in ("REST", "gRPC")}
    return ", ".join(f"{p} {len(rs)} requests / {sum(not r.ok for r in rs)} failed" for p, rs in by.items())


def _failures(records: list[Record]) -> list[Record]:
    return [r for r in records if not r.ok]


def _status(rest_port: int, model: str = "digits_cnn") -> list[dict]:
    connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
    connection.request("GET", f"/v1/models/{model}")
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer.get("model_version_status", [])


def _copy_version(source: Path, base: Path, version: int) -> None:
    """Drop a version in atomically (as a deployment tool should): copy aside, then rename into place."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / (1024 * 1024)


def _server(tmp: Path, scenario: str, source: Path, *flags: str):
    """(base path holding version 1, a server on it): each scenario's own copy of the model."""

    base = tmp / scenario
    base.mkdir()
    _copy_version(source, base, 1)
    return base, ServerProcess("--model_name=digits_cnn", f"--model_base_path={base}", *flags)


def hot_version_change(source: Path, image: bytes, duration: float, poll: float, tmp: Path) -> tuple[bool, str]:
    base, server = _server(tmp, "hot", source, f"--file_system_poll_wait_seconds={poll:g}")
    try:
        with Load(server.rest_port, server.grpc_port, image) as load:
            time.sleep(duration * 0.2)
            dropped = time.monotonic()
            _copy_version(source, base, 2)
            time.sleep(duration * 0.4)
            removed = time.monotonic()
            shutil.rmtree(base / "1")
            time.sleep(duration * 0.4)
            records = load.stop()
        states = {s["version"]: s["state"] for s in _status(server.rest_port)}
    finally:
        code = server.stop()
    first_v2 = min((r.ended for r in records if r.version == 2), default=float("nan")) - dropped
    last_v1 = max((r.ended for r in records if r.version == 1), default=float("nan")) - dropped
    late_v1 = [r for r in records if r.version == 1 and r.started > removed]
    failed = _failures(records)
    ok = (not failed and not late_v1 and states.get("2") == "AVAILABLE" and states.get("1") in (None, "END")
          and code == 0)
    line = (f"1. hot version change under load ({duration:g}s, poll {poll:g}s): {_summary(records)}\n"
            f"   version 2 answered {first_v2:.2f}s after it was dropped in, the last version-1 answer came "
            f"{last_v1:.2f}s after (two poll periods: {2 * poll:g}s); {len(late_v1)} version-1 answers after its "
            f"directory was removed; final status {states}; server exit {code}"
            + ("" if ok else f"\n   FAILED: {[r.error for r in failed[:3]]}"))
    print(line)
    return ok, line


def corrupt_version(source: Path, image: bytes, duration: float, tmp: Path) -> tuple[bool, str]:
    base, server = _server(tmp, "corrupt", source, "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0")
    try:
        with Load(server.rest_port, server.grpc_port, image) as load:
            time.sleep(duration * 0.3)
            broken = base / ".staging-2"
            broken.mkdir()
            (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
            broken.rename(base / "2")
            time.sleep(duration * 0.7)
            records = load.stop()
        status = {s["version"]: s for s in _status(server.rest_port)}
    finally:
        code = server.stop()
    failed = _failures(records)
    v2 = status.get("2", {})
    ok = (not failed and status.get("1", {}).get("state") == "AVAILABLE" and v2.get("state") == "END"
          and v2.get("status", {}).get("error_code") not in (None, "OK") and code == 0)
    line = (f"2. corrupt version under load ({duration:g}s): {_summary(records)}; version 1 "
            f"{status.get('1', {}).get('state')}, version 2 {v2.get('state')} "
            f"({v2.get('status', {}).get('error_code')}: {str(v2.get('status', {}).get('error_message'))[:90]})"
            + ("" if ok else f"\n   FAILED: {[r.error for r in failed[:3]]}"))
    print(line)
    return ok, line


def graceful_stop(source: Path, image: bytes, duration: float, tmp: Path) -> tuple[bool, str]:
    _, server = _server(tmp, "sigterm", source)
    with Load(server.rest_port, server.grpc_port, image, rest_clients=3, grpc_clients=3) as load:
        time.sleep(duration)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=60)
        time.sleep(0.5)
        records = load.stop()
    server.stop()
    in_flight = [r for r in records if r.started < signalled < r.ended]
    lost = [r for r in records if r.started < signalled and not r.ok]
    refused = [r for r in records if r.started >= signalled and not r.ok]
    ok = code == 0 and not lost and all(r.ok for r in in_flight)
    line = (f"3. SIGTERM under load: {len(in_flight)} requests in flight at the signal, all completed: "
            f"{all(r.ok for r in in_flight)}; {len(lost)} requests sent before it failed; {len(refused)} later "
            f"ones refused ({refused[0].error[:70] if refused else 'none'}); exit code {code}")
    print(line)
    return ok, line


def overload(source: Path, image: bytes, duration: float, tmp: Path) -> tuple[bool, str]:
    batching = tmp / "batching.config"
    batching.write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n"
                        "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")
    _, server = _server(tmp, "overload", source, "--enable_batching=true", f"--batching_parameters_file={batching}")
    try:
        with Load(server.rest_port, server.grpc_port, image, rest_clients=0, grpc_clients=24) as load:
            time.sleep(duration)
            records = load.stop()
    finally:
        code = server.stop()
    accepted = [r for r in records if r.ok]
    rejected = [r for r in records if not r.ok]
    kinds = sorted({r.error.split(":")[0] for r in rejected})
    ms = lambda rs, q: float(np.percentile([(r.ended - r.started) * 1000 for r in rs], q)) if rs else float("nan")  # noqa: E731
    ok = bool(rejected) and kinds == ["UNAVAILABLE"] and bool(accepted) and code == 0
    line = (f"4. overload (24 gRPC clients, a one-batch queue of 2, {duration:g}s): {len(accepted)} accepted "
            f"(p50 {ms(accepted, 50):.1f} ms, p99 {ms(accepted, 99):.1f} ms), {len(rejected)} refused as {kinds} "
            f"(p50 {ms(rejected, 50):.2f} ms, p99 {ms(rejected, 99):.2f} ms); server exit {code}")
    print(line)
    return ok, line


def soak(source: Path, image: bytes, duration: float, tmp: Path) -> tuple[bool, str]:
    _, server = _server(tmp, "soak", source)
    try:
        with Load(server.rest_port, server.grpc_port, image) as load:
            warmup = min(60.0, duration * 0.2)
            time.sleep(warmup)
            after_warmup = _rss_mb(server.proc.pid)
            time.sleep(duration - warmup)
            at_end = _rss_mb(server.proc.pid)
            records = load.stop()
    finally:
        code = server.stop()
    failed = _failures(records)
    growth = at_end / after_warmup - 1
    ok = not failed and growth <= 0.10 and code == 0
    line = (f"5. soak ({duration:g}s): {_summary(records)}; resident memory {after_warmup:.0f} MB after "
            f"{warmup:g}s warm-up, {at_end:.0f} MB at the end ({growth:+.1%}; limit +10%); server exit {code}")
    print(line)
    return ok, line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/digits_cnn.yaml", help="the model (default: digits_cnn)")
    parser.add_argument("--quick", action="store_true", help="short scenarios (the test suite's)")
    parser.add_argument("--soak", type=float, help="soak seconds (default 600, --quick 20)")
    parser.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,3")
    args = parser.parse_args(argv)

    version_dir = ensure_exported(load_spec(args.spec))
    _, _, images, _ = digits_uint8(seed=0)
    image = encode(images[0][..., np.newaxis], "png")
    length = 10.0 if args.quick else 30.0
    soak_s = args.soak or (20.0 if args.quick else 600.0)
    chosen = {int(n) for n in args.only.split(",")} if args.only else {1, 2, 3, 4, 5}
    results = []
    with tempfile.TemporaryDirectory(prefix="tfsb-reliability-") as tmp:
        tmp = Path(tmp)
        scenarios = {1: lambda: hot_version_change(version_dir, image, length, 1.0, tmp),
                     2: lambda: corrupt_version(version_dir, image, length * 0.5, tmp),
                     3: lambda: graceful_stop(version_dir, image, 3.0, tmp),
                     4: lambda: overload(version_dir, image, length * 0.5, tmp),
                     5: lambda: soak(version_dir, image, soak_s, tmp)}
        for number in sorted(chosen):
            results.append((number, *scenarios[number]()))
    failed = [n for n, ok, _ in results if not ok]
    print("reliability: all passed" if not failed else f"reliability: scenario(s) {failed} FAILED")
    figures = Figures("reliability", "make reliability", "The server under load and faults")
    figures.note(f"{Path(args.spec).stem}, closed-loop REST (b64) and gRPC (bytes) clients; {length:g} s scenarios, "
                 f"a {soak_s:g} s soak. Each scenario passes or fails on behaviour, never on a time.")
    for number, ok, line in results:
        name, _, figures_text = line.partition(": ")
        figures.add(name.split(". ", 1)[1], "passed" if ok else "FAILED", detail=figures_text.replace("\n", " "))
    figures.save(partial=args.quick or bool(args.only) or args.soak is not None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
