"""`make perf`: the embedded server's performance targets, each printed as a ratio measured in this run.

1. Serving overhead: p50 of one real JPEG through the served model (gRPC bytes, REST b64) divided by the
   p50 of calling the same signature in-process. Targets: <= 1.05 gRPC, <= 1.10 REST.
2. REST decoding: a body with one 224x224x3 float image, our decoder vs json.loads + numpy.asarray.
   Target: ours takes <= 1/8 of the time.
3. Batching: 16 concurrent gRPC clients, throughput with --enable_batching divided by without. Target >= 1.25.
   Both runs get --grpc_max_threads=32: each waiting client holds a gRPC thread, and with the default 4 per
   CPU a batch could never exceed 8 on a 2-CPU machine.
4. Startup: seconds from `python -m server` to its ready line with the model loaded, the server as it is
   (TensorFlow imported without Keras, server/tfimport.py) divided by the same server with Keras imported first,
   as a plain `import tensorflow` does. Interleaved starts, medians. Target <= 0.80.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.figures import Figures
from exporter.export import existing_versions, export
from exporter.images import bundled_photos, encode, resize
from server.model import LoadedModel
from server.process import READY_LINE, ServerProcess, free_port, stop_child
from server.tensors import fastpath
from spec import contract as c
from spec.errors import SpecError
from spec.loader import load_spec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _p50(samples):
    return statistics.median(samples)


def _timed(function, count):
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def latest_export(spec):

    versions = existing_versions(spec.model_dir)
    if versions:
        return spec.model_dir / str(versions[-1])
    print(f"no export of {spec.name} yet: exporting")
    return export(spec).path


def serving_overhead(version_dir: Path, name: str, jpeg: bytes, rounds: int, per_round: int) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    model = LoadedModel.load(version_dir)
    signature = model.signatures[c.IMAGE_SIGNATURE]
    batch = np.array([jpeg], dtype=object)
    in_process = lambda: model.run(signature, {c.IMAGE_INPUT: batch}, [c.OUTPUT])
    server = ServerProcess(f"--model_name={name}", f"--model_base_path={version_dir.parent}")
    channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_receive_message_length", 2**31 - 1)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs[c.IMAGE_INPUT].CopyFrom(tf.make_tensor_proto([jpeg], dtype=tf.string))
    via_grpc = lambda: stub.Predict(request, 60)
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port)

    def via_rest():
        connection.request("POST", f"/v1/models/{name}:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        assert response.status == 200, payload[:200]

    samples = {"in_process": [], "grpc": [], "rest": []}
    try:
        for call in (in_process, via_grpc, via_rest):
            _timed(call, 5)  # warm every path
        for _ in range(rounds):  # interleaved, so drift hits all three alike
            samples["in_process"] += _timed(in_process, per_round)
            samples["grpc"] += _timed(via_grpc, per_round)
            samples["rest"] += _timed(via_rest, per_round)
    finally:
        connection.close()
        channel.close()
        server.stop()
        model.close()
    return {key: _p50(values) * 1000 for key, values in samples.items()}


def rest_decoding(repeats: int) -> dict:

    image = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    body = json.dumps({"instances": image.tolist()}).encode()
    native = fastpath.native_check()

    def ours(check):
        fastpath._native = check  # the C skeleton check, or False for the pure-Python one
        return fastpath.fast_body(body).array(1)

    baseline = lambda: np.asarray(json.loads(body)["instances"], dtype=np.float32)
    checks = {"C": native, "Python": False} if native is not None else {"Python": False}
    for check in checks.values():
        assert np.array_equal(ours(check), baseline())
    times = {name: [] for name in [*checks, "baseline"]}
    for _ in range(repeats):  # interleaved, so that each sees the same machine
        for name, check in checks.items():
            times[name] += _timed(lambda: ours(check), 1)
        times["baseline"] += _timed(baseline, 1)
    fastpath._native = native if native is not None else False
    return {"body_bytes": len(body), "check": next(iter(checks)),
            "ours_ms": {name: _p50(times[name]) * 1000 for name in checks},
            "json_asarray_ms": _p50(times["baseline"]) * 1000}


def in_process_batch_gain(version_dir: Path, jpeg: bytes, size: int, repeats: int = 7) -> dict:
    """Sequential in-process runs: one image at a time vs one batch of `size`, per image. With no server in the
    way, this is how much a batch of that size can gain on this machine at most (same-process, same threads)."""

    model = LoadedModel.load(version_dir)
    signature = model.signatures[c.IMAGE_SIGNATURE]
    try:
        one = np.array([jpeg], dtype=object)
        many = np.array([jpeg] * size, dtype=object)
        single = lambda: model.run(signature, {c.IMAGE_INPUT: one}, [c.OUTPUT])
        batch = lambda: model.run(signature, {c.IMAGE_INPUT: many}, [c.OUTPUT])
        _timed(single, 3), _timed(batch, 2)
        per_single = _p50(_timed(single, repeats * 4))
        per_batched = _p50(_timed(batch, repeats)) / size
    finally:
        model.close()
    return {"single_ms": per_single * 1000, "batched_ms": per_batched * 1000, "gain": per_single / per_batched}


def batching_throughput(version_dir: Path, name: str, jpeg: bytes, seconds: float, clients: int,
                        timeout_us: int = 20000, threads: int = 1) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    def run(*flags):
        # every client needs a gRPC thread while it waits for its batch (TF Serving: --grpc_max_threads, 4 per CPU)
        server = ServerProcess(f"--model_name={name}", f"--model_base_path={version_dir.parent}",
                               f"--grpc_max_threads={2 * clients}", *flags)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs[c.IMAGE_INPUT].CopyFrom(tf.make_tensor_proto([jpeg], dtype=tf.string))
        counts = [0] * clients
        stop = threading.Event()

        def client(index):
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                stub.Predict(request, 60)
                while not stop.is_set():
                    stub.Predict(request, 60)
                    counts[index] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(2)  # ramp up
        before, started = sum(counts), time.perf_counter()
        time.sleep(seconds)
        done, elapsed = sum(counts) - before, time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join()
        server.stop()
        return done / elapsed

    with tempfile.TemporaryDirectory() as directory:
        params = Path(directory) / "batching.txt"
        params.write_text(f"max_batch_size {{ value: {clients} }}\nbatch_timeout_micros {{ value: {timeout_us} }}\n"
                          f"num_batch_threads {{ value: {threads} }}\nmax_enqueued_batches {{ value: 100 }}\n")
        off = run()
        on = run("--enable_batching", f"--batching_parameters_file={params}")
    return {"clients": clients, "rps_off": off, "rps_on": on}


KERAS_FIRST = ("import sys, runpy, keras; sys.argv[0] = 'server'; "
               "runpy.run_module('server', run_name='__main__', alter_sys=True)")


def _seconds_to_ready(command: list[str], timeout: float = 120) -> float:
    """Start a server command, wait for its ready line on stderr, stop it; the seconds it took."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = started + timeout
        for line in proc.stderr:
            if READY_LINE in line:
                return time.perf_counter() - started
            if time.perf_counter() > deadline:
                break
        raise RuntimeError(f"{' '.join(command[:4])}: no ready line (exit {proc.poll()})")
    finally:
        stop_child(proc)


def startup(version_dir: Path, name: str, rounds: int) -> dict:
    """Median seconds to ready: the server as it is, and with Keras imported before it (interleaved)."""
    times = {"without_keras": [], "with_keras": []}
    for _ in range(rounds):
        flags = [f"--port={free_port()}", f"--rest_api_port={free_port()}", f"--model_name={name}",
                 f"--model_base_path={version_dir.parent}"]
        times["without_keras"].append(_seconds_to_ready([sys.executable, "-m", "server", *flags]))
        flags[:2] = [f"--port={free_port()}", f"--rest_api_port={free_port()}"]
        times["with_keras"].append(_seconds_to_ready([sys.executable, "-c", KERAS_FIRST, *flags]))
    return {key: _p50(values) for key, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="specs/mobilenet_v2.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window of each batching run")
    parser.add_argument("--batch-timeout-us", type=int, default=20000, help="batch_timeout_micros of the batching run")
    parser.add_argument("--batch-threads", type=int, default=1, help="num_batch_threads of the batching run")
    parser.add_argument("--only", choices=["overhead", "decoding", "batching", "startup"], action="append",
                        help="run only these parts (repeatable); all four by default")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    version_dir = latest_export(spec)
    photo = dict(bundled_photos())["chelsea"]
    jpeg = encode(resize(photo, 640, 480), "jpeg", 90)
    print(f"model {spec.name} at {version_dir}; one JPEG of {len(jpeg)} bytes; {os.cpu_count()} CPUs")

    parts = set(args.only or ["overhead", "decoding", "batching", "startup"])
    figures = Figures("perf", "make perf", "The embedded server against TensorFlow in-process")
    figures.note(f"{spec.name}, one 640x480 JPEG of {len(jpeg)} bytes; p50 of {args.rounds} rounds of "
                 f"{args.per_round} calls; batching runs of {args.seconds:g} s.")
    if "overhead" in parts:
        overhead = serving_overhead(version_dir, spec.name, jpeg, args.rounds, args.per_round)
        grpc_ratio = overhead["grpc"] / overhead["in_process"]
        rest_ratio = overhead["rest"] / overhead["in_process"]
        print(f"1. serving overhead (p50): in-process {overhead['in_process']:.2f} ms, gRPC {overhead['grpc']:.2f} ms, "
              f"REST b64 {overhead['rest']:.2f} ms")
        print(f"   gRPC / in-process = {grpc_ratio:.3f} (target <= 1.05) {'PASS' if grpc_ratio <= 1.05 else 'FAIL'}")
        print(f"   REST / in-process = {rest_ratio:.3f} (target <= 1.10) {'PASS' if rest_ratio <= 1.10 else 'FAIL'}")
        figures.add("gRPC p50 / in-process p50", grpc_ratio, "{:.3f}", "<= 1.05", grpc_ratio <= 1.05,
                    f"{overhead['grpc']:.2f} ms vs {overhead['in_process']:.2f} ms")
        figures.add("REST b64 p50 / in-process p50", rest_ratio, "{:.3f}", "<= 1.10", rest_ratio <= 1.10,
                    f"{overhead['rest']:.2f} ms vs {overhead['in_process']:.2f} ms")

    if "decoding" in parts:
        decoding = rest_decoding(15)
        used = decoding["check"]
        speedup = decoding["json_asarray_ms"] / decoding["ours_ms"][used]
        print(f"2. REST decoding of one 224x224x3 float image ({decoding['body_bytes']} bytes): ours "
              f"{decoding['ours_ms'][used]:.2f} ms, json.loads + numpy.asarray {decoding['json_asarray_ms']:.2f} ms")
        print(f"   ours / baseline = 1/{speedup:.1f} (target <= 1/8) {'PASS' if speedup >= 8 else 'FAIL'}")
        if used == "C":
            python_ms = decoding["ours_ms"]["Python"]
            print(f"   skeleton check in C, beside the parse; with the pure-Python check: {python_ms:.2f} ms "
                  f"(1/{decoding['json_asarray_ms'] / python_ms:.1f})")
        else:
            print("   skeleton check in Python: the C helpers are not built (make venv builds them with a C compiler)")
        figures.add("REST float-image decoding / (json.loads + numpy.asarray)", speedup, "1/{:.1f}",
                    "<= 1/8", speedup >= 8,
                    f"{decoding['ours_ms'][used]:.2f} ms vs {decoding['json_asarray_ms']:.2f} ms, "
                    f"skeleton check in {used}")

    if "batching" in parts:
        batching = batching_throughput(version_dir, spec.name, jpeg, args.seconds, 16, args.batch_timeout_us,
                                       args.batch_threads)
        gain = batching["rps_on"] / batching["rps_off"]
        ceiling = in_process_batch_gain(version_dir, jpeg, batching["clients"])
        print(f"3. batching, {batching['clients']} gRPC clients (batch_timeout_micros {args.batch_timeout_us}, "
              f"num_batch_threads {args.batch_threads}): off {batching['rps_off']:.1f} req/s, "
              f"on {batching['rps_on']:.1f} req/s")
        print(f"   on / off = {gain:.2f} (target >= 1.25) {'PASS' if gain >= 1.25 else 'FAIL'}")
        print(f"   for scale, in-process: {ceiling['single_ms']:.1f} ms per image one at a time, "
              f"{ceiling['batched_ms']:.1f} ms per image in a batch of {batching['clients']} "
              f"({ceiling['gain']:.2f}x; the server's unbatched runs already overlap on the {os.cpu_count()} CPUs)")
        figures.add(f"batching on / off, {batching['clients']} gRPC clients", gain, "{:.2f}", ">= 1.25",
                    gain >= 1.25,
                    f"{batching['rps_on']:.1f} vs {batching['rps_off']:.1f} req/s; in-process a batch is "
                    f"{ceiling['gain']:.2f}x cheaper per image")
    if "startup" in parts:
        start = startup(version_dir, spec.name, args.rounds)
        ratio = start["without_keras"] / start["with_keras"]
        print(f"4. startup to ready (median of {args.rounds}): {start['without_keras']:.2f} s; with Keras imported "
              f"first {start['with_keras']:.2f} s")
        print(f"   ours / with Keras = {ratio:.2f} (target <= 0.80) {'PASS' if ratio <= 0.80 else 'FAIL'}")
        figures.add("server start to ready / the same with Keras imported", ratio, "{:.2f}", "<= 0.80",
                    ratio <= 0.80, f"{start['without_keras']:.2f} s vs {start['with_keras']:.2f} s")
    figures.save(partial=bool(args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
