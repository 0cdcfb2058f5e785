"""`make perf-harness`: the load generator must not distort what it measures.

A stand-in PredictionService takes a fixed 50 ms per call (on 32 threads, so it can serve many
calls at once) and answers each image with its expected probabilities. Ten GrpcUsers run against
it in one headless Locust process, exactly as in `make bench`:

* with the lean client (loadtests/drive/leangrpc.py on gevent sockets, what `make bench` uses) and with
  grpcio made gevent-safe (grpc.experimental.gevent.init_gevent, what the locustfile does for
  benchmark.grpc_client: grpcio), users overlap and reach close to 10 / 0.05 s = 200 requests/s;
  target >= 150 for both;
* with grpcio's gevent support disabled (LOADTESTS_BLOCKING_GRPC=1), each call blocks every user,
  and 10 users reach 1 / 0.05 s = 20 requests/s.

All three numbers are printed, measured in this run.
"""
from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np

from benchmarks.figures import Figures
from exporter.images import bundled_photos, encode, resize
from loadtests.drive.payloads import PayloadSet
from loadtests.measure.run import Step, Target, measure, run_step
from spec import contract as c

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SERVICE_MS = 50.0
TARGET_RPS = 150.0


def _payloads(directory: Path):

    photos = bundled_photos()[:4]
    jpegs = [encode(resize(pixels, 64, 48), "jpeg", 90) for _, pixels in photos]
    expected = np.full((len(jpegs), 10), 0.01, np.float32)
    for i in range(len(jpegs)):
        expected[i, i] = 0.91
    payloads = PayloadSet("stand_in", [f"{name}@64x48" for name, _ in photos], [(64, 48)] * len(jpegs), jpegs,
                          np.zeros((len(jpegs), 2, 2, 3), np.float32), expected, {"kind": "synthetic"})
    path = directory / "payloads.npz"
    payloads.save(path)
    return payloads, path


def _stand_in_server(payloads, port: int):
    """A PredictionService that sleeps SERVICE_MS and answers the expected probabilities of the image sent."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    answers = {}
    for i, jpeg in enumerate(payloads.jpegs):
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=payloads.expected[i:i + 1].tobytes())
        tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (1, 10))
        answers[jpeg] = tensor

    class Slow(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            time.sleep(SERVICE_MS / 1000)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.outputs[c.OUTPUT].CopyFrom(answers[request.inputs[c.IMAGE_INPUT].string_val[0]])
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Slow(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def _measure(payload_file: Path, port: int, out_dir: Path, client: str, blocking: bool, users: int,
             seconds: float) -> dict:

    os.environ["LOADTESTS_BLOCKING_GRPC"] = "1" if blocking else "0"
    try:
        target = Target(model="stand_in", rest_url="http://127.0.0.1:9", grpc_target=f"127.0.0.1:{port}",
                        payload_file=payload_file, warmup_s=2.0, duration_s=seconds, spawn_rate=100.0,
                        grpc_client=client)
        step = Step("grpc", "image_b64", users)
        run_dir = out_dir / (client + ("-blocking" if blocking else ""))
        return measure(step, run_step(step, target, run_dir), [0] * 4, [(64, 48)] * 4)
    finally:
        os.environ.pop("LOADTESTS_BLOCKING_GRPC", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        payloads, payload_file = _payloads(Path(tmp))
        server = _stand_in_server(payloads, port)
        try:
            lean = _measure(payload_file, port, Path(tmp), "lean", False, args.users, args.seconds)
            fast = _measure(payload_file, port, Path(tmp), "grpcio", False, args.users, args.seconds)
            slow = _measure(payload_file, port, Path(tmp), "grpcio", True, args.users, args.seconds)
        finally:
            server.stop(0)
    ideal = args.users * 1000 / SERVICE_MS
    print(f"stand-in server: {SERVICE_MS:.0f} ms per call; {args.users} GrpcUsers; ideal {ideal:.0f} req/s")
    for name, result in (("lean client (as in make bench)", lean), ("grpcio, gevent-safe", fast),
                         ("grpcio, blocking (init_gevent off)", slow)):
        print(f"  {name:38} {result['rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
              f"failures {result['failures']}/{result['requests']}  generator CPU {result['generator_cpu_percent']:.0f}%")
    met = all(r["rps"] >= TARGET_RPS and r["failures"] == 0 for r in (lean, fast))
    figures = Figures("perf-harness", "make perf-harness", "gRPC users run concurrently")
    figures.note(f"A stand-in server taking {SERVICE_MS:.0f} ms per call, {args.users} GrpcUsers, {args.seconds:g} s "
                 f"windows: the ideal is {ideal:.0f} req/s.")
    for name, result, goal in (("lean client (as in make bench)", lean, True), ("grpcio, gevent-safe", fast, True),
                               ("grpcio, blocking (init_gevent off)", slow, False)):
        ok = result["rps"] >= TARGET_RPS and result["failures"] == 0
        figures.add(name, result["rps"], "{:.1f} req/s", f">= {TARGET_RPS:.0f} req/s" if goal else "",
                    ok if goal else None, f"p50 {result['p50_ms']:.1f} ms, failures {result['failures']}/"
                    f"{result['requests']}, generator CPU {result['generator_cpu_percent']:.0f}%")
    figures.save()
    print(f"  ratio gevent-safe / blocking grpcio: {fast['rps'] / max(slow['rps'], 1e-9):.1f}x; "
          f"target >= {TARGET_RPS:.0f} req/s for both concurrent clients: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
