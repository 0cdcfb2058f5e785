"""REST front end: TF Serving's /v1 API over the shared DataPlane (http_rest_api_handler.cc semantics).

A thread per connection (HTTP/1.1 keep-alive) accepts and reads requests; model runs happen in that
thread and release the GIL, so the accept loop is never blocked by a model. Errors come from the one
error table; bodies are {"error": "..."} with Content-Type application/json.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote

import numpy as np

from server.dataplane import DataPlane, SignatureNotFound, Target
from server.errors import InvalidArgument, RequestTooLarge, ServingError, as_serving_error, http_status
from server.examples import examples_from_request
from server.metrics import Metrics
from server.tensors import fastpath, json_in, json_out

log = logging.getLogger("server.rest")

POST_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
GET_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
V1_PATH = re.compile(r"(?i)/v1/.*")
NOT_FOUND_HTML = (b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                  b"The requested URL was not found on this server.\n</BODY></HTML>\n")


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, indent=4, ensure_ascii=False).encode()


def _target(match: re.Match) -> Target:
    """Model name, version and label from a POST_PATH / GET_PATH match (name and label URL-decoded)."""
    label = unquote(match.group(3)) if match.group(3) else None
    return Target(unquote(match.group(1)), _version(match.group(2)), label)


def _version(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    value = int(text)
    if value > 2**63 - 1:
        raise InvalidArgument(f"Failed to convert version: {text} to numeric.")
    return value


class RestApi:
    """Routing and translation; independent of the HTTP server so it can be tested directly."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, cors: bool = False,
                 prometheus_path: Optional[str] = None):
        self.dataplane = dataplane
        self.metrics = metrics
        self.cors = cors
        self.prometheus_path = prometheus_path

    def handle(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        """(status, headers, body) for one request."""
        path = path.split("?", 1)[0]
        if self.prometheus_path and path == self.prometheus_path and method == "GET":
            return 200, {"Content-Type": "text/plain"}, self.metrics.render().encode()
        if not V1_PATH.fullmatch(path):
            return 404, {"Content-Type": "text/html"}, NOT_FOUND_HTML
        json_headers = {"Content-Type": "application/json"}
        if self.cors:
            json_headers.update({"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                                 "Access-Control-Allow-Headers": "Content-Type"})
        if method == "OPTIONS":
            if re.match(r"https?://", headers.get("origin", "")):
                return 200, json_headers, b""
            return 400, json_headers, error_body("Origin header is missing in CORS preflight")
        started = time.perf_counter()
        model_name, api = "", ""
        try:
            if method == "POST" and (match := POST_PATH.fullmatch(path)) and match.group(4) in (
                    "classify", "regress", "predict"):
                target, api = _target(match), match.group(4)
                model_name = target.name
                payload = getattr(self, f"_{api}")(target, body)
            elif method == "GET" and (match := GET_PATH.fullmatch(path)):
                if not match.group(1):
                    raise InvalidArgument("Missing model name in request.")
                target = _target(match)
                model_name = target.name
                payload = self._metadata(target) if match.group(4) else self._status(target)
            else:
                raise InvalidArgument(f"Malformed request: {method} {path}")
        except Exception as exc:  # the one REST catch: the error table, or INTERNAL for anything unexpected
            error = as_serving_error(exc)
            if not isinstance(exc, ServingError):
                log.exception("internal error in %s %s", method, path)
            self.metrics.record_request(model_name, api, "REST", error.code.name, 0)
            return http_status(error), json_headers, error_body(error.message)
        body = payload.encode()  # TF Serving stops its clock once the response body is written, before sending
        self.metrics.record_request(model_name, api, "REST", "OK", (time.perf_counter() - started) * 1e6)
        return 200, json_headers, body

    # ------------------------------------------------------------------------------ predict

    def _predict(self, target: Target, body: bytes) -> str:
        fast = fastpath.fast_body(body)
        if fast is not None:
            doc = None
            signature_name = fast.signature_name or ""
        else:
            doc, signature_name = _object_and_signature(body)
        target = Target(target.name, target.version, target.label, signature_name)
        row_format = (fast.key == "instances") if fast is not None else None

        def decode(signature):
            nonlocal row_format, doc
            if fast is not None and len(signature.inputs) == 1:
                (alias, spec), = signature.inputs.items()
                array = fast.array(spec.dtype)
                if array is not None:
                    return {alias: array}
            if doc is None:
                doc = json_in.loads(body)
            row_format, inputs = _decode_predict(doc, signature)
            return inputs

        try:
            _, outputs = self.dataplane.predict(target, decode)
        except SignatureNotFound as exc:
            raise InvalidArgument(f'Serving signature name: "{exc.signature_name}" not found in signature def') \
                from None
        return json_out.predictions_json(outputs) if row_format else json_out.outputs_json(outputs)

    # ---------------------------------------------------------------------- classify/regress

    def _examples(self, target: Target, body: bytes, method: str) -> tuple[Target, list[bytes]]:
        doc, signature_name = _object_and_signature(body)
        return Target(target.name, target.version, target.label, signature_name), examples_from_request(doc, method)

    def _classify(self, target: Target, body: bytes) -> str:
        target, examples = self._examples(target, body, "classify")
        _, results = self.dataplane.classify(target, examples)
        if not results:
            raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
        rows = ["[" + ", ".join(f"[{json.dumps(label)}, {json_out.array_json(np.array(score, np.float32), '')}]"
                                for label, score in row) + "]" for row in results]
        return '{"results": [' + ", ".join(rows) + "]}"

    def _regress(self, target: Target, body: bytes) -> str:
        target, examples = self._examples(target, body, "regress")
        _, values = self.dataplane.regress(target, examples)
        if not values:
            raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
        return '{"results": ' + json_out.array_json(np.array(values, dtype=np.float32), "") + "}"

    # ------------------------------------------------------------------- status and metadata

    def _status(self, target: Target) -> str:
        states = self.dataplane.status(target.name, target.version)
        return json.dumps({"model_version_status": [
            {"version": str(s.version), "state": s.state,
             "status": {"error_code": s.error_code.name, "error_message": s.error_message}} for s in states]},
            indent=1)

    def _metadata(self, target: Target) -> str:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        resolved, signature_defs = self.dataplane.metadata(target)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signature_defs.items():
            sig_map.signature_def[key].CopyFrom(value)
        signature_json = json_format.MessageToJson(sig_map, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True)
        spec = json.dumps({"name": resolved.name, "signature_name": "", "version": str(resolved.version)})
        return '{\n"model_spec":' + spec + ',\n"metadata": {"signature_def": ' + signature_json + "}\n}\n"


def _object_and_signature(body: bytes) -> tuple[dict, str]:
    """Parse a body that must be a JSON object with an optional string signature_name (TF Serving's checks)."""
    doc = json_in.loads(body)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {json_in.compact(doc)[:256]} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument(f"JSON Value: {json_in.compact(doc)[:256]} not formatted correctly. "
                              "'signature_name' key must be a string value.")
    return doc, signature_name


def _decode_predict(doc: dict, signature) -> tuple[bool, dict]:
    """(row format?, inputs) from a parsed predict body, following FillPredictRequestFromJson."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise InvalidArgument(f"JSON Value: {json_in.compact(doc)[:256]} Not formatted correctly expecting only one "
                              "of 'inputs' or 'instances' keys to exist ")
    if not has_instances and not has_inputs:
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    specs = signature.inputs
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {json_in.compact(instances)[:256]} Excepting 'instances' to be an "
                                  "list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {json_in.compact(doc)[:256]} No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not json_in.is_b64(instances[0])
        if not objects:
            if len(specs) > 1:
                raise InvalidArgument("instances is a plain list, but expecting list of objects as multiple input "
                                      "tensors required as per tensorinfo_map")
            alias = next(iter(specs))
            return True, {alias: _rows(instances, specs[alias].dtype)}
        for index, item in enumerate(instances):
            if not isinstance(item, dict) or json_in.is_b64(item) or set(item) != set(specs):
                raise InvalidArgument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                      f"{json_in.compact(item)[:256]} keys must be equal to: {','.join(specs)}")
        return True, {alias: _rows([item[alias] for item in instances], spec.dtype) for alias, spec in specs.items()}
    value = doc["inputs"]
    if isinstance(value, dict) and not json_in.is_b64(value):
        for alias in specs:
            if alias not in value:
                raise InvalidArgument(f"Missing named input: {alias} in 'inputs' object.")
        return False, {alias: json_in.json_to_array(value[alias], spec.dtype) for alias, spec in specs.items()}
    if len(specs) > 1:
        raise InvalidArgument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                              "required as per tensorinfo_map")
    alias = next(iter(specs))
    return False, {alias: json_in.json_to_array(value, specs[alias].dtype)}


def _rows(rows: list, dtype: int):
    try:
        return json_in.rows_to_array(rows, dtype)
    except InvalidArgument as exc:
        if exc.message.startswith("Expecting"):
            raise
        raise InvalidArgument(f"Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
                              f"{exc.message}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfserve-bench"
    # headers and body go out in separate writes: with Nagle on, the body waits for the client's delayed ACK
    disable_nagle_algorithm = True
    api: RestApi
    max_request_bytes: int
    gate: threading.BoundedSemaphore

    def log_message(self, format, *args):  # noqa: A002 - quiet: access logs would distort benchmarks
        pass

    def _read_body(self) -> bytes:
        limit = self.max_request_bytes
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > limit:
                    raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > limit:
                self._drain(length)
                raise RequestTooLarge(f"Request body of {length} bytes exceeds the limit of {limit} bytes")
            body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = inflater.decompress(body, limit + 1)
            except zlib.error as exc:
                raise InvalidArgument(f"Failed to decompress gzip request body: {exc}") from None
            if len(body) > limit:
                raise RequestTooLarge(f"Decompressed request body exceeds the limit of {limit} bytes")
        return body

    def _drain(self, length: int) -> None:
        """Read and drop a moderately oversized body so the client sees the 413 instead of a broken pipe;
        a body over twice the limit (plus 1 MiB) is not read: the connection is just closed after the answer."""
        if length > 2 * self.max_request_bytes + (1 << 20):
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    def _serve(self) -> None:
        try:
            # any method may carry a body (GET, DELETE, OPTIONS too): it is always consumed, or its bytes
            # would be read as the next request on this keep-alive connection
            body = self._read_body()
        except RequestTooLarge as error:
            self.close_connection = True  # the unread body makes this connection unusable
            self._send(http_status(error), {"Content-Type": "application/json"}, error_body(error.message))
            return
        except (ValueError, ServingError) as error:
            self.close_connection = True
            message = error.message if isinstance(error, ServingError) else f"Malformed request body: {error}"
            self._send(400, {"Content-Type": "application/json"}, error_body(message))
            return
        with self.gate:
            status, headers, payload = self.api.handle(self.command, self.path, body, dict(
                (k.lower(), v) for k, v in self.headers.items()))
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict, payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    # listen(2)'s backlog: 128, libevent's default, which TF Serving's HTTP server (evhttp) binds with. socketserver's
    # 5 made a burst of new connections (an open-loop client under overload opens one per request in flight) lose
    # their SYNs, each lost one costing its client a 1 s, then 3 s, 7 s ... retransmission: REST throughput fell
    # from 735 to 25 req/s with latencies of 13 s, which TF Serving does not do
    request_queue_size = 128


class RestServer:
    """The HTTP server on (host, port); port 0 picks a free port (see `.port`)."""

    def __init__(self, api: RestApi, host: str, port: int, num_threads: int, max_request_bytes: int):
        handler = type("Handler", (_Handler,), {"api": api, "max_request_bytes": max_request_bytes,
                                                "gate": threading.BoundedSemaphore(max(1, num_threads))})
        self._server = _ThreadingServer((host, port), handler)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; requests already being handled finish on their own threads."""
        self._server.shutdown()
        self._server.server_close()
