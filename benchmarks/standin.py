"""A stand-in model server whose timing is known: what the load generator is measured against.

`python -m benchmarks.standin --payload-file P.npz --rest-port R --grpc-port G [--service-ms 20] [--servers 1]
[--stall-every 4 --stall-s 1]` answers TF Serving's REST :predict and gRPC Predict for the requests of a
PayloadSet (each with that image's expected probabilities, so the users' answer checks pass), on 127.0.0.1:

* `--service-ms S --servers k`: each request holds one of k servers for S ms (k = 1: one request at a time, a
  deterministic single-server queue, M/D/1 under Poisson arrivals); 0 ms answers at once.
* `--stall-every P --stall-s D`: the whole server freezes for D seconds every P seconds (a garbage-collection
  pause, a noisy neighbour): requests arriving in a stall wait for its end.
* `--delays 40x4,10` (`--cycle`): the service time follows a schedule from the first request on: 40 ms for 4 s,
  then 10 ms from then on; with --cycle every step has a length and the schedule repeats (`10x2,40x2`: a server
  that never settles). It replaces --service-ms.
* `GET /stats`: requests answered and the seconds servers were held, so a test can compare with theory.

One asyncio loop serves both protocols (a small HTTP/1.1 reader and grpc.aio with raw bytes in and out), so the
stand-in costs far less per request than the Locust process driving it. Requests are matched on their exact bytes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from exporter.images import bundled_photos, encode, resize
from loadtests.drive.payloads import PAYLOADS, PayloadSet
from server.process import free_port, stop_child
from spec import contract as c

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def synthetic_payloads(directory: Path, count: int = 4, model: str = "stand_in"):
    """A PayloadSet of bundled photos at 64x48 whose 'right answers' are class i for image i (no model needed)."""

    photos = bundled_photos()[:count]
    jpegs = [encode(resize(pixels, 64, 48), "jpeg", 90) for _, pixels in photos]
    expected = np.full((len(jpegs), 10), 0.01, np.float32)
    for i in range(len(jpegs)):
        expected[i, i % 10] = 0.91
    rng = np.random.default_rng(0)
    tensors = rng.random((len(jpegs), 4, 4, 3), dtype=np.float32)
    payloads = PayloadSet(model, [f"{name}@64x48" for name, _ in photos], [(64, 48)] * len(jpegs), jpegs,
                          tensors, expected, {"kind": "synthetic"})
    path = directory / "payloads.npz"
    payloads.save(path)
    return payloads, path


def _answers(payload_file: Path, model: str) -> tuple[dict, dict]:
    """{REST body: JSON answer} and {serialized PredictRequest: serialized PredictResponse} for every payload."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    payloads = PayloadSet.load(payload_file)
    rest, grpc_answers = {}, {}
    for i in range(len(payloads)):
        row = payloads.expected[i:i + 1]
        rest_answer = json.dumps({"predictions": row.tolist()}).encode()
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=row.tobytes())
        tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in row.shape)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model
        response.outputs[c.OUTPUT].CopyFrom(tensor)
        for payload in PAYLOADS:
            rest[payloads.rest_body(payload, i)] = rest_answer
            grpc_answers[payloads.grpc_request(payload, i, model).SerializeToString()] = response.SerializeToString()
    return rest, grpc_answers


class Timing:
    """Service time on k servers, plus periodic stalls of the whole server."""

    def __init__(self, service_ms: float, servers: int, stall_every: float, stall_s: float,
                 delays: Optional[list[tuple[float, Optional[float]]]] = None, cycle: bool = False):
        self.service_s = service_ms / 1000.0
        self.servers = asyncio.Semaphore(servers)
        self.stall_every, self.stall_s = stall_every, stall_s
        self.started = time.monotonic()
        self.delays, self.cycle = delays or [], cycle
        self.first: Optional[float] = None
        self.count = 0
        self.busy_s = 0.0

    def _scheduled_service_s(self) -> float:
        """The service time the --delays schedule gives now (seconds since the first request)."""
        now = time.monotonic()
        self.first = self.first if self.first is not None else now
        into = now - self.first
        if self.cycle:
            into %= sum(length for _, length in self.delays)
        for delay_ms, length in self.delays:
            if length is None or into < length:
                return delay_ms / 1000.0
            into -= length
        return self.delays[-1][0] / 1000.0

    async def serve(self) -> None:
        if self.delays:
            self.service_s = self._scheduled_service_s()
        if self.stall_every:
            into = (time.monotonic() - self.started) % self.stall_every
            if into > self.stall_every - self.stall_s:  # the last stall_s of every period
                await asyncio.sleep(self.stall_every - into)
        if self.service_s:
            async with self.servers:
                held = time.monotonic()
                await asyncio.sleep(self.service_s)
                self.busy_s += time.monotonic() - held
        self.count += 1


async def _http(reader, writer, rest: dict, timing: Timing) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, header_block = head.partition(b"\r\n")
            length = 0
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            method, path = request_line.split(b" ")[:2]
            if method == b"GET" and path == b"/stats":
                status, answer = b"200 OK", json.dumps({"count": timing.count, "busy_s": timing.busy_s}).encode()
            elif method == b"POST" and path.endswith(b":predict") and body in rest:
                await timing.serve()
                status, answer = b"200 OK", rest[body]
            else:
                status, answer = b"400 Bad Request", b'{"error": "the stand-in knows no such request"}'
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(answer)).encode() + b"\r\n\r\n" + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(args) -> None:
    import grpc

    rest, grpc_answers = _answers(Path(args.payload_file), args.model)
    timing = Timing(args.service_ms, args.servers, args.stall_every, args.stall_s, parse_delays(args.delays, args.cycle),
                    args.cycle)

    async def predict(request: bytes, context) -> bytes:
        answer = grpc_answers.get(request)
        if answer is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stand-in knows no such request")
        await timing.serve()
        return answer

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(predict)})  # no (de)serializers: raw bytes
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    await server.start()
    http = await asyncio.start_server(lambda r, w: _http(r, w, rest, timing), "127.0.0.1", args.rest_port)
    print(f"stand-in ready: REST 127.0.0.1:{args.rest_port} gRPC 127.0.0.1:{args.grpc_port} pid {os.getpid()}",
          flush=True)
    async with http:
        await http.serve_forever()


def parse_delays(text: str, cycle: bool) -> list[tuple[float, Optional[float]]]:
    """'40x4,10' -> [(40.0, 4.0), (10.0, None)]: milliseconds for seconds; the last may go on for ever (not with
    cycle)."""
    steps: list[tuple[float, Optional[float]]] = []
    for number, item in enumerate(filter(None, (part.strip() for part in text.split(","))), 1):
        delay, _, length = item.partition("x")
        steps.append((float(delay), float(length) if length else None))
        if steps[-1][1] is None and (cycle or number < len(text.split(","))):
            raise SystemExit(f"--delays: step {number} ({item!r}) needs a length in seconds (MSxSECONDS)")
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--payload-file", required=True)
    parser.add_argument("--model", default="stand_in")
    parser.add_argument("--rest-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--service-ms", type=float, default=0.0)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--stall-every", type=float, default=0.0)
    parser.add_argument("--stall-s", type=float, default=0.0)
    parser.add_argument("--delays", default="", help="a service-time schedule from the first request: 40x4,10")
    parser.add_argument("--cycle", action="store_true", help="repeat the --delays schedule")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


class StandIn:
    """Run the stand-in as a child process on free loopback ports: `with StandIn(payload_file, ...) as s:`."""

    def __init__(self, payload_file: Path, service_ms: float = 0.0, servers: int = 1, stall_every: float = 0.0,
                 stall_s: float = 0.0, model: str = "stand_in", delays: str = "", cycle: bool = False):

        self.model = model
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.command = [sys.executable, "-m", "benchmarks.standin", "--payload-file", str(payload_file),
                        "--model", model, "--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port),
                        "--service-ms", str(service_ms), "--servers", str(servers),
                        "--stall-every", str(stall_every), "--stall-s", str(stall_s)]
        if delays:
            self.command += ["--delays", delays] + (["--cycle"] if cycle else [])
        self.process = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(f"{self.rest_url}/stats", timeout=10) as answer:
            return json.loads(answer.read())

    def __enter__(self) -> "StandIn":
        import subprocess
        repo = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(self.command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        line = self.process.stdout.readline()  # "stand-in ready: ..." once both ports listen
        if not line.startswith("stand-in ready"):
            self.process.kill()
            raise RuntimeError(f"the stand-in did not start: {line}{self.process.stderr.read()[-2000:]}")
        return self

    def __exit__(self, *exc) -> None:
        stop_child(self.process, timeout=10)


if __name__ == "__main__":
    sys.exit(main())
