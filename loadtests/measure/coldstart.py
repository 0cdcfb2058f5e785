"""Cold start: a fresh server (process or container) from start to its first correct answer, then its first requests.

One start is timed from the moment the server is started (after an image build: Deployment.prepare) to
1. both ports accepting connections (polled every POLL_S),
2. GetModelStatus answering AVAILABLE (polled as finely over gRPC),
3. the first Predict whose answer is the in-process one;
then `first_requests` Predicts one at a time, the first answer the first of them (their latencies by index, the
server's memory at their peak), and
`steady_requests` more, whose p50 is the steady latency. The server's own metrics say whether the warmup ran
(`/tensorflow/serving/model_warmup_latency`: one observation per warmed version) and how long the SavedModel took to
load (`/tensorflow/cc/saved_model/load_latency`); its log says how many warmup records it read.
"""
from __future__ import annotations

import re
import shutil
import statistics
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from deploy.base import DeployError, Deployment, port_in_use
from deploy.deployment import deployment_for
from deploy.waiting import version_states
from loadtests.drive import wire
from loadtests.drive.servermetrics import metrics_url, parse
from loadtests.measure.correctness import MismatchError
from loadtests.measure.session import provenance
from server.dataplane import WARMUP_FILE
from spec.errors import UsageError
from spec.results import ColdStartVariant

POLL_S = 0.01
ALIVE_S = 0.25
SETTLE_RUN = 10  # a first request is slow while the median of it and the next SETTLE_RUN - 1 is slow
WARMUP_METRIC = ":tensorflow:serving:model_warmup_latency"
LOAD_METRIC = ":tensorflow:cc:saved_model:load_latency"
RECORDS_READ = re.compile(r"Number of warmup records read: (\d+)")
MIB = 1024.0 * 1024.0


def _records(path: Path) -> list[bytes]:
    """The records of a TFRecord file (framing: length, its CRC, data, its CRC; the CRCs are not checked)."""
    records, data, at = [], path.read_bytes(), 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        records.append(data[at + 12:at + 12 + length])
        at += 12 + length + 4
    return records


def warmup_records(version_dir: Path) -> Optional[int]:
    """How many records the version's warmup file holds, or None when it has none."""
    path = Path(version_dir) / WARMUP_FILE
    return len(_records(path)) if path.is_file() else None


def warmup_predict_requests(version_dir: Path, model: str) -> list:
    """The PredictRequests of the version's warmup records, addressed to `model` (its latest version): what the
    server replays when it warms the version up. Empty when it has none."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(version_dir) / WARMUP_FILE
    logs = [prediction_log_pb2.PredictionLog.FromString(record) for record in (_records(path) if path.is_file()
                                                                                 else [])]
    return [addressed(log.predict_log.request, model) for log in logs if log.WhichOneof("log_type") == "predict_log"]


def addressed(request, model: str):
    """A copy of a PredictRequest addressed to `model`, its latest version."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.model_spec.name = model
    copy.model_spec.ClearField("version_choice")
    return copy


def copy_version(version_dir: Path, target: Path, ignore=None) -> None:
    """copytree, or a UsageError naming both folders and what went wrong (a full disk, a broken link in the
    export, a folder it cannot write)."""
    try:
        shutil.copytree(version_dir, target, ignore=ignore)
    except (OSError, shutil.Error) as exc:
        detail = exc.args[0][0][2] if isinstance(exc, shutil.Error) and exc.args and exc.args[0] else exc
        raise UsageError(f"lifecycle: cannot copy the export {version_dir} to {target}: {detail}; make lifecycle "
                         "works on copies of the export (in the run's folder under benchmark.output_dir), so it "
                         "needs a complete export and room to copy it") from None


def no_warmup_file(version_dir: Path) -> Callable[[str, list], list]:
    """copytree's `ignore` that leaves out the version's warmup records, nothing else."""
    holder = (version_dir / WARMUP_FILE.parent).resolve()
    return lambda folder, names: [WARMUP_FILE.name] if Path(folder).resolve() == holder else []


def without_warmup(version_dir: Path, into: Path) -> Path:
    """A copy of the version (as <into>/<model>/<version>, the export's layout) without its warmup records; returns
    the new export base path (`into`)."""
    copy_version(version_dir, into / version_dir.parent.name / version_dir.name, ignore=no_warmup_file(version_dir))
    return into


def slow_requests(latencies_ms: Sequence[float], steady_p50_ms: float, factor: float) -> int:
    """How many of the first requests came before latency settled: the index of the first request that is itself
    within `factor` x the steady p50 and from which the median of SETTLE_RUN requests is too (so one slow request
    later on is noise, not a slow start); all of them when none is."""
    values = np.asarray(latencies_ms, dtype=float)
    limit = factor * steady_p50_ms
    for i in range(max(0, values.size - SETTLE_RUN + 1)):
        if values[i] <= limit and float(np.median(values[i:i + SETTLE_RUN])) <= limit:
            return i
    return int(values.size)


class MemoryPeak:
    """The largest memory reading of a deployment while a block runs (sampled every `interval_s` in a thread)."""

    def __init__(self, deployment: Deployment, interval_s: float = 0.1):
        self.deployment, self.interval_s = deployment, interval_s
        self.peak: Optional[int] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _take(self) -> None:
        try:
            value = self.deployment.memory_bytes()
        except Exception:  # noqa: BLE001 - a reading that fails is a reading missed, never a failed start
            return
        if value is not None:
            self.peak = value if self.peak is None else max(self.peak, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> "MemoryPeak":
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


def _mib(value: Optional[int]) -> Optional[float]:
    return None if value is None else value / MIB


def server_facts(rest_url: str, monitoring_path: str, logs: str, path_suffix: str = "") -> dict:
    """What the server says about its start, from its metrics page and its log (see read_facts)."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url(rest_url, monitoring_path), timeout=10) as response:
            return read_facts(response.read().decode("utf-8", "replace"), logs, path_suffix)
    except OSError as exc:
        return {**read_facts("", logs), "metrics_error": f"{type(exc).__name__}: {exc}"}


def read_facts(metrics_text: str, logs: str, path_suffix: str = "") -> dict:
    """Warmup runs (model_warmup_latency's count, status OK: one per warmed version) and their total ms, the
    SavedModel's load time (load_latency, ms), and the warmup records the log says were read (None if it says
    nothing). `path_suffix` (e.g. /model/2): only the metrics of model paths ending so (one version)."""
    facts = {"warmup_runs": 0, "warmup_ms": 0.0, "load_ms": None, "metrics_error": None,
             "warmup_records_read": None}
    for name, labels, value in parse(metrics_text):
        if not labels.get("model_path", "").rstrip("/").endswith(path_suffix):
            continue
        if name == WARMUP_METRIC + "_count" and labels.get("status") == "OK":
            facts["warmup_runs"] += int(value)
        elif name == WARMUP_METRIC + "_sum" and labels.get("status") == "OK":
            facts["warmup_ms"] += value / 1000.0
        elif name == LOAD_METRIC:
            facts["load_ms"] = (facts["load_ms"] or 0.0) + value / 1000.0
    found = RECORDS_READ.findall(logs)
    if found:
        facts["warmup_records_read"] = int(found[-1])
    return facts


class Probe:
    """Predict over gRPC with one payload, checked against the in-process answer."""

    def __init__(self, payloads, payload: str, model: str, grpc_target: str):
        import grpc

        self.payloads, self.payload, self.model = payloads, payload, model
        self.channel = grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                   ("grpc.max_send_message_length", 64 << 20)])
        self.predict = wire.predict_method(self.channel)
        self.requests = [payloads.grpc_request(payload, i, model) for i in range(len(payloads))]

    def available(self, timeout_s: float = 1.0) -> bool:
        """Whether GetModelStatus says a version is AVAILABLE (False while the server cannot say)."""
        import grpc

        try:
            return "AVAILABLE" in version_states(self.channel, self.model, timeout_s).values()
        except grpc.RpcError:
            return False

    def ask(self, index: int, timeout_s: float = 60.0) -> float:
        """One Predict of image `index`; its latency in ms. MismatchError when the answer is not the in-process
        one; grpc.RpcError when there is none."""
        i = index % len(self.requests)
        started = time.perf_counter()
        response = self.predict(self.requests[i], timeout=timeout_s)
        took = (time.perf_counter() - started) * 1000.0
        _diff, problem = self.payloads.compare(i, self.payloads.answer_grpc(response))
        if problem:
            raise MismatchError(f"cold start: gRPC {self.payload}: {problem}")
        return took

    def close(self) -> None:
        self.channel.close()


def one_start(deployment: Deployment, payloads, payload: str, settings, log: Callable[[str], None],
              monitoring_path: str) -> dict:
    """Start `deployment` cold, time it to its first correct answer, then its first and steady requests; stop it.
    DeployError (with the server's last log lines) when it stops or does not answer within settings.start_timeout."""
    import grpc

    endpoints = deployment.endpoints
    deployment.prepare()
    probe = Probe(payloads, payload, endpoints.model, endpoints.grpc_target)
    times: dict = {"ports_open_s": None, "available_s": None, "first_answer_s": None}
    try:
        started = time.perf_counter()
        deployment.start()
        checked = started  # whether the server still runs is asked every ALIVE_S (docker: an engine call)
        while times["first_answer_s"] is None:
            now = time.perf_counter() - started
            if now > settings.start_timeout:
                raise DeployError(f"cold start: no correct answer {settings.start_timeout:.0f} s after starting the "
                                  f"server (ports open: {times['ports_open_s'] is not None}, AVAILABLE: "
                                  f"{times['available_s'] is not None}); raise lifecycle.start_timeout for a slow "
                                  f"model\n{_tail(deployment)}")
            if times["ports_open_s"] is None:
                if port_in_use(endpoints.host, endpoints.rest_port) and port_in_use(endpoints.host,
                                                                                  endpoints.grpc_port):
                    times["ports_open_s"] = now
            elif times["available_s"] is None:
                if probe.available():
                    times["available_s"] = time.perf_counter() - started
            else:
                try:
                    first_ms = probe.ask(0, timeout_s=max(1.0, settings.start_timeout - now))
                    times["first_answer_s"] = time.perf_counter() - started
                    break
                except grpc.RpcError:
                    pass
            gone = None
            if time.perf_counter() - checked >= ALIVE_S:
                gone, checked = deployment.alive(), time.perf_counter()
            if gone:
                raise DeployError(f"cold start: the server stopped before its first answer ({gone})\n"
                                  f"{_tail(deployment)}")
            time.sleep(POLL_S)
        memory_available = deployment.memory_bytes()
        with MemoryPeak(deployment) as peak:
            first = [first_ms] + [probe.ask(i) for i in range(1, settings.first_requests)]
        steady = [probe.ask(i) for i in range(settings.steady_requests)]
        steady_p50 = float(np.percentile(steady, 50))
        facts = server_facts(endpoints.rest_url, monitoring_path, deployment.logs())
    finally:
        probe.close()
        deployment.stop()
    slow = slow_requests(first, steady_p50, settings.slow_factor)
    return {**times, "first_request_ms": first[0], "first_requests_ms": [round(v, 3) for v in first],
            "first_p50_ms": float(np.percentile(first, 50)), "steady_p50_ms": steady_p50,
            "steady_p99_ms": float(np.percentile(steady, 99)), "slow_requests": slow,
            "slow_ms": float(sum(first[:slow])), "memory_available_mb": _mib(memory_available),
            "memory_peak_mb": _mib(peak.peak), **facts}


def _tail(deployment: Deployment) -> str:
    lines = deployment.logs().strip().splitlines()[-12:]
    return "the server's last log lines:\n" + "\n".join("    " + line for line in lines) if lines else ""


FIGURES = ("ports_open_s", "available_s", "first_answer_s", "first_request_ms", "first_p50_ms", "steady_p50_ms",
           "slow_requests", "slow_ms", "memory_available_mb", "memory_peak_mb", "warmup_runs", "warmup_ms",
           "load_ms")


def medians(starts: Sequence[dict]) -> dict:
    """The median of each figure over the starts (None where no start has it)."""
    out = {}
    for key in FIGURES:
        values = [s[key] for s in starts if isinstance(s.get(key), (int, float))]
        out[key] = float(statistics.median(values)) if values else None
    return out


AS_EXPORTED, WITHOUT_WARMUP = "as exported", "without warmup records"


def run_cold_starts(spec, backend: str, version_dir: Path, payloads, payload: str, run_dir: Path,
                    log: Callable[[str], None]) -> tuple[list, Optional[int], dict]:
    """lifecycle.repeats cold starts of the export as it is and, when it has warmup records, of a copy without them
    (interleaved); returns the variants (spec.results.ColdStartVariant), the export's warmup records and the first
    start's provenance."""
    settings = spec.lifecycle
    records = warmup_records(version_dir)
    variants = [(AS_EXPORTED, spec, records is not None)]
    copy_dir = run_dir / ".without-warmup"
    if records:
        export = spec.export.model_copy(update={"base_path": without_warmup(version_dir, copy_dir)})
        variants.append((WITHOUT_WARMUP, spec.model_copy(update={"export": export}), False))
    log(f"cold start: {settings.repeats} start(s) of {' and '.join(name for name, _, _ in variants)} on the "
        f"{backend} backend; {settings.first_requests} first requests one at a time over gRPC ({payload})")
    starts: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    described: dict = {}
    try:
        for repeat in range(1, settings.repeats + 1):
            for name, variant_spec, _ in variants:
                quiet = log if repeat == 1 and name == AS_EXPORTED else (lambda _line: None)
                deployment = deployment_for(variant_spec, backend, quiet)
                one = one_start(deployment, payloads, payload, settings, log, spec.serving.monitoring.path)
                described = described or provenance(spec, version_dir, deployment, reused=False)
                starts[name].append(one)
                log(f"  start {repeat} {name}: ports open {one['ports_open_s']:.2f} s, AVAILABLE "
                    f"{one['available_s']:.2f} s, first answer {one['first_answer_s']:.2f} s; first request "
                    f"{one['first_request_ms']:.1f} ms, steady p50 {one['steady_p50_ms']:.2f} ms, "
                    f"{one['slow_requests']} slow; warmup runs {one['warmup_runs']}"
                    + (f"; memory {one['memory_peak_mb']:.0f} MiB" if one["memory_peak_mb"] is not None else ""))
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)
    typed = [ColdStartVariant(name=name, base_path=str(v.resolve(v.export.base_path)), warmup_file=has_file,
                              starts=tuple(starts[name]), median=medians(starts[name]))
             for name, v, has_file in variants]
    return typed, records, described


def warmup_verdict(records: Optional[int], variants: Sequence) -> dict:
    """Whether the warmup ran, from the server's own metrics, in words: `used` (True, False, or None when the
    export has no warmup file), `short` and `text`."""
    exported = next(v for v in variants if v.name == AS_EXPORTED)
    runs = [s.get("warmup_runs", 0) for s in exported.starts]
    read = [s.get("warmup_records_read") for s in exported.starts]
    if not records:
        return {"used": None, "records": 0, "short": "not measured (the export has no warmup records)",
                "text": "the export has no warmup records (assets.extra/tf_serving_warmup_requests), so only the "
                        "export as it is was started; export.warmup: true writes them at export time"}
    if not all(runs):
        return {"used": False, "records": records, "short": "NOT USED", "text": (
            f"NOT USED: the export has {records} warmup records, but the server's model_warmup_latency counted "
            f"{sum(runs)} warmup runs in {len(runs)} starts: the server ignored the file (is --enable_model_warmup "
            "false, or is the file not in the served version's assets.extra?)")}
    stray = [v.name for v in variants if v.name != AS_EXPORTED and any(s.get("warmup_runs") for s in v.starts)]
    text = (f"used: the server replayed the export's {records} warmup record{'s' if records != 1 else ''} at "
            "every start (model_warmup_latency: one warmup per start"
            + (f"; its log: {read[0]} records read" if read[0] is not None else "") + ")")
    if stray:
        text += f"; but the copy without them warmed up too ({', '.join(stray)}): the server read another file"
    return {"used": True, "records": records, "records_read": read[0], "short": "used", "text": text}
