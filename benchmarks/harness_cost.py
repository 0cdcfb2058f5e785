"""`make perf-cost`: what the harness adds to each figure, against independent load generators.

On the same embedded server, the same model and the same request body (one image), one connection, closed loop:

* REST: wrk (Debian's `wrk`, a Lua script POSTs the :predict body) against our RestUser;
* gRPC: h2load (Debian's `nghttp2-client`, the length-prefixed PredictRequest as the HTTP/2 body) against our
  GrpcUser with its lean client, and (for comparison, no goal) with grpcio (h2load reports a mean per request,
  not percentiles: means are compared for gRPC).

For a fast model (specs/digits_cnn.yaml) and MobileNetV2 (specs/mobilenet_v2.yaml), prints latency and
throughput of both and their ratios, measured in this run. Then the lean gRPC client against one built on the
`h2` library's HTTP/2 state machine (benchmarks/h2library.py): the same calls, one at a time in this process, in
interleaved rounds; the figure is the library's client CPU per call over ours (the hand-written receive path is
kept only while the library costs measurably more). Goals: ours within 1.15x of theirs on the fast model
and 1.02x on MobileNetV2. Each runs alone (one after the other), so they never compete for the cores, in
interleaved rounds (ours, theirs, ours, ...): the ratio is the median of the rounds' ratios, so a drift of the
machine or the model between runs does not land on one side.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.figures import Figures
from benchmarks.h2library import H2LibraryGrpc
from exporter.export import ensure_exported
from loadtests.analyze import validity
from loadtests.drive.http2 import grpc_message
from loadtests.drive.leangrpc import LeanGrpc
from loadtests.drive.payloads import PayloadSet
from loadtests.drive.wire import PREDICT_METHOD
from loadtests.measure.payloadsets import load_or_build
from loadtests.measure.run import Step, Target, run_and_measure
from server.process import ServerProcess
from spec.loader import load_spec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
GOALS = {"specs/digits_cnn.yaml": 1.15, "specs/mobilenet_v2.yaml": 1.02}


def _wrk(url: str, body: Path, seconds: float, work: Path) -> dict:
    script = work / "post.lua"
    script.write_text('local f = io.open("%s", "rb")\nwrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
                      'wrk.headers["Content-Type"] = "application/json"\n' % body)
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (p50 and rps) or "Non-2xx" in out:
        raise RuntimeError(f"wrk did not measure successful requests:\n{out}")
    return {"p50_ms": float(p50.group(1)) * scale[p50.group(2)], "rps": float(rps.group(1))}


def _h2load(target: str, framed: Path, seconds: float) -> dict:
    url = f"http://{target}/tensorflow.serving.PredictionService/Predict"
    out = subprocess.run(["h2load", "-c1", "-m1", "-t1", "-D", str(int(seconds)), "-d", str(framed),
                          "-H", "content-type: application/grpc", "-H", "te: trailers", url],
                         capture_output=True, text=True, check=True).stdout
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not (mean and rps and done) or done.group(1) != done.group(2) or int(done.group(2)) == 0:
        raise RuntimeError(f"h2load did not measure successful requests:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {"mean_ms": float(mean.group(1)) * scale[mean.group(2)], "rps": float(rps.group(1))}


LIBRARY_CALLS = 400  # per client and round: a few thousand calls in all, a second or two per round


def library_cost(spec_path: str, grpc_target: str, message: bytes, rounds: int) -> dict:
    """Client CPU and wall time per unary call: the lean client against the h2 library's, interleaved rounds.
    Both must give the same answer first: a client that answers wrong costs nothing worth knowing."""
    framed = grpc_message(message)
    lean, library = LeanGrpc(grpc_target, PREDICT_METHOD), H2LibraryGrpc(grpc_target)
    try:
        (ours, error), (theirs, their_error) = lean.call(framed), library.call(framed)
        if error or their_error or ours != theirs:
            raise RuntimeError(f"the two gRPC clients disagree: lean {error or len(ours)}, h2 library "
                               f"{their_error or len(theirs)}")
        cost: dict[str, list[tuple[float, float]]] = {"lean": [], "h2": []}
        for _ in range(rounds):
            for name, client in (("lean", lean), ("h2", library)):
                for _ in range(LIBRARY_CALLS // 10):  # warm: allocator, socket buffers, the server's own caches
                    client.call(framed)
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(LIBRARY_CALLS):
                    _answer, failed = client.call(framed)
                    if failed:
                        raise RuntimeError(f"the {name} client failed a call: {failed}")
                cost[name].append(((time.perf_counter() - wall) / LIBRARY_CALLS * 1000.0,
                                   (time.process_time() - cpu) / LIBRARY_CALLS * 1e6))
    finally:
        lean.close()
        library.close()
    ratios = [h2[1] / ours[1] for ours, h2 in zip(cost["lean"], cost["h2"])]
    return {"spec": spec_path, "ratio": statistics.median(ratios), "ratios": ratios,
            "ours_us": statistics.median(c[1] for c in cost["lean"]),
            "theirs_us": statistics.median(c[1] for c in cost["h2"]),
            "ours_ms": statistics.median(c[0] for c in cost["lean"]),
            "theirs_ms": statistics.median(c[0] for c in cost["h2"])}


def measure_spec(spec_path: str, seconds: float, rounds: int, work: Path) -> tuple[list[dict], dict]:

    spec = load_spec(REPO / spec_path)
    version_dir = ensure_exported(spec, log=lambda line: None)
    full, _ = load_or_build(spec, version_dir, log=lambda line: None)
    one = PayloadSet(full.model, full.names[:1], full.sizes[:1], full.jpegs[:1], full.tensors[:1], full.expected[:1],
                     full.source)
    payload_file = work / f"{spec.name}-one.npz"
    one.save(payload_file)
    body = work / f"{spec.name}.json"
    body.write_bytes(one.rest_body("image_b64", 0))
    message = one.grpc_request("image_b64", 0, spec.name).SerializeToString()
    framed = work / f"{spec.name}.grpc"
    framed.write_bytes(struct.pack(">?I", False, len(message)) + message)
    server = ServerProcess(f"--model_name={spec.name}", f"--model_base_path={version_dir.parent}")
    rows = []
    try:
        rest_url, grpc_target = f"http://127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"
        target = Target(model=spec.name, rest_url=rest_url, grpc_target=grpc_target, payload_file=payload_file,
                        warmup_s=2.0, duration_s=seconds, spawn_rate=10, server_pid=server.proc.pid)
        rules = validity.Rules(min_duration_s=1.0)

        def ours(name: str, protocol: str, client: str, round_: int) -> dict:
            sizes = {(protocol, "image_b64"): [len(body.read_bytes())]}
            entry = run_and_measure(Step(protocol, "image_b64", users=1, tag=f"{client}-r{round_}"),
                                    dataclasses.replace(target, grpc_client=client), work / spec.name, sizes,
                                    one.sizes, rules)
            if entry["failures"]:
                raise RuntimeError(f"our {name} user failed: {entry['failure_reasons']}")
            return entry

        pairs: dict[str, list[tuple[dict, dict]]] = {"REST": [], "gRPC": [], "gRPC/grpcio": []}
        for round_ in range(rounds):  # interleaved, so a drift of the machine or the model hits both sides alike
            rest = ours("rest", "rest", "lean", round_)
            wrk = _wrk(f"{rest_url}/v1/models/{spec.name}:predict", body, seconds, work)
            pairs["REST"].append(({"ms": rest["p50_ms"], "rps": rest["rps"]}, {"ms": wrk["p50_ms"], "rps": wrk["rps"]}))
            lean = ours("grpc", "grpc", "lean", round_)
            h2 = _h2load(grpc_target, framed, seconds)
            official = ours("grpcio", "grpc", "grpcio", round_)
            theirs = {"ms": h2["mean_ms"], "rps": h2["rps"]}
            pairs["gRPC"].append(({"ms": lean["mean_ms"], "rps": lean["rps"]}, theirs))
            pairs["gRPC/grpcio"].append(({"ms": official["mean_ms"], "rps": official["rps"]}, theirs))
            print(f"  round {round_ + 1}/{rounds}: REST {rest['p50_ms']:.2f} vs wrk {wrk['p50_ms']:.2f} ms; gRPC "
                  f"{lean['mean_ms']:.2f} (grpcio {official['mean_ms']:.2f}) vs h2load {h2['mean_ms']:.2f} ms", flush=True)
        library = library_cost(spec_path, grpc_target, message, rounds)
        print(f"  gRPC client CPU per call: lean {library['ours_us']:.0f} us, h2 library {library['theirs_us']:.0f} us",
              flush=True)
    finally:
        server.stop()
    for protocol, measured in pairs.items():
        ratios = [a["ms"] / b["ms"] for a, b in measured]
        rows.append({"spec": spec_path, "protocol": protocol, "tool": "wrk" if protocol == "REST" else "h2load",
                     "metric": "p50" if protocol == "REST" else "mean",
                     "goal": None if protocol == "gRPC/grpcio" else GOALS.get(spec_path, 1.15),
                     "ratio": statistics.median(ratios), "ratios": ratios,
                     "theirs_ms": statistics.median(b["ms"] for _, b in measured),
                     "ours_ms": statistics.median(a["ms"] for a, _ in measured),
                     "theirs_rps": statistics.median(b["rps"] for _, b in measured),
                     "ours_rps": statistics.median(a["rps"] for a, _ in measured)})
    return rows, library


def _keep(library: dict) -> str:
    """What the figure decides: the hand-written receive path stays only while the library costs more."""
    if library["ratio"] > 1.1 and min(library["ratios"]) > 1.0:
        return "the lean client's own receive path is kept (the library costs more in every round)"
    return "the library costs no more: the lean client's receive path should give way to it"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per generator and protocol")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ours, theirs, ours, ...) per spec")
    parser.add_argument("--specs", default=",".join(GOALS))
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        print(f"error: {' and '.join(missing)} not installed: apt-get install wrk nghttp2-client")
        return 2
    rows, libraries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec_path in args.specs.split(","):
            print(f"{spec_path}: {args.rounds} rounds of our users, wrk and h2load, {args.seconds:g} s each", flush=True)
            measured, library = measure_spec(spec_path, args.seconds, args.rounds, Path(tmp))
            rows.extend(measured)
            libraries.append(library)
    print("\none connection, closed loop, one image; ratio = ours / theirs (latency, the median of the rounds' ratios) "
          "and theirs / ours (req/s, medians)")
    print(f"  {'model':24} {'protocol':11} {'tool':7} | {'theirs ms':>9} {'ours ms':>9} {'ratio':>7} | "
          f"{'theirs rps':>10} {'ours rps':>9} {'ratio':>7} | goal")
    met = True
    for r in rows:
        ratio, goal = r["ratio"], r["goal"]
        verdict = "(grpcio, for comparison)" if goal is None else \
            f"<= {goal:.2f}x {'met' if ratio <= goal else 'NOT met'} ({r['metric']})"
        met &= goal is None or ratio <= goal
        print(f"  {Path(r['spec']).stem:24} {r['protocol']:11} {r['tool']:7} | {r['theirs_ms']:9.2f} "
              f"{r['ours_ms']:9.2f} {ratio:6.2f}x | {r['theirs_rps']:10.1f} {r['ours_rps']:9.1f} "
              f"{r['theirs_rps'] / r['ours_rps']:6.2f}x | {verdict}")
    print(f"\nthe lean gRPC client against the h2 library's state machine, client CPU per call ({LIBRARY_CALLS} calls "
          f"a round, the median of {args.rounds} rounds' ratios)")
    for lib in libraries:
        print(f"  {Path(lib['spec']).stem:24} h2 library {lib['theirs_us']:6.0f} us, lean {lib['ours_us']:6.0f} us: "
              f"{lib['ratio']:.2f}x ({lib['theirs_ms']:.2f} against {lib['ours_ms']:.2f} ms a call) -> {_keep(lib)}")
    figures = Figures("perf-cost", "make perf-cost", "What the harness costs: our users against wrk and h2load")
    figures.note(f"The same embedded server, model and one-image body; one connection, closed loop; {args.rounds} "
                 f"interleaved rounds of {args.seconds:g} s (ours, theirs, ours, ...). The ratio is ours / theirs "
                 "latency (p50 for REST, mean for gRPC: h2load gives no percentiles), the median of the rounds' "
                 "ratios, so a drift of the machine between runs does not land on one side.")
    for r in rows:
        goal = r["goal"]
        figures.add(f"{Path(r['spec']).stem}: {r['protocol']} against {r['tool']}", r["ratio"], "{:.2f}x",
                    f"<= {goal:.2f}x" if goal is not None else "", (r["ratio"] <= goal) if goal is not None else None,
                    f"{r['theirs_ms']:.2f} ms theirs, {r['ours_ms']:.2f} ms ours; {r['theirs_rps']:.1f} / "
                    f"{r['ours_rps']:.1f} req/s" + ("" if goal is not None else " (grpcio, for comparison)"))
    for lib in libraries:
        figures.add(f"{Path(lib['spec']).stem}: gRPC client CPU per call, the h2 library over the lean client",
                    lib["ratio"], "{:.2f}x", "", None,
                    f"{lib['theirs_us']:.0f} us against {lib['ours_us']:.0f} us a call; {_keep(lib)}")
    figures.save(partial=args.specs != ",".join(GOALS))
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
