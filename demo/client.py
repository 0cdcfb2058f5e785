"""The demo's calls to the deployed model: one image over REST (b64) and over gRPC (bytes), timed.

The requests are the load tests' own (loadtests.drive.payloads.image_rest_body / image_grpc_request), and so
is the reading of the answers, so what the page shows is what the benchmark measures.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence
from urllib.parse import urlsplit

import numpy as np

from loadtests.drive import wire
from loadtests.drive.payloads import (IMAGE_SIGNATURE, image_grpc_request, image_rest_body, probabilities_from_grpc,
                                      probabilities_from_rest)

TIMEOUT_S = 30.0


class ModelDown(Exception):
    """The model server does not answer at all (connection refused, timeout)."""


@dataclass(frozen=True)
class Answer:
    """One protocol's answer for one image: top classes, or what went wrong."""
    protocol: str
    latency_ms: float
    request_bytes: int
    top: tuple = ()
    error: Optional[str] = None

    def as_json(self) -> dict:
        return {"protocol": self.protocol, "ok": self.error is None, "latency_ms": round(self.latency_ms, 2),
                "request_bytes": self.request_bytes, "error": self.error,
                "top": [{"index": i, "label": label, "score": score} for i, label, score in self.top]}


def top_classes(probabilities, labels: Sequence[str], k: int) -> tuple:
    """(index, label, score) of the k best classes of a [1, classes] answer, best first."""
    scores = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return tuple((int(i), labels[i] if i < len(labels) else str(i), float(scores[i])) for i in order)


class ModelClient:
    """A kept-alive REST connection and a gRPC channel to one model; safe to share between threads."""

    def __init__(self, rest_url: str, grpc_target: str, model: str):
        import grpc

        self.rest_url, self.grpc_target, self.model = rest_url.rstrip("/"), grpc_target, model
        parts = urlsplit(self.rest_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._rest_lock = threading.Lock()
        self._connection: Optional[http.client.HTTPConnection] = None
        self._channel = grpc.insecure_channel(grpc_target, options=[("grpc.max_send_message_length", 64 << 20),
                                                                    ("grpc.max_receive_message_length", 64 << 20)])
        self._predict = wire.predict_method(self._channel)

    def close(self) -> None:
        self._channel.close()
        if self._connection is not None:
            self._connection.close()

    def _rest(self, method: str, path: str, body: Optional[bytes] = None) -> tuple[int, bytes]:
        """One REST exchange on the kept-alive connection (reconnecting once if the server closed it)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self._rest_lock:
            for attempt in (1, 2):
                if self._connection is None:
                    self._connection = http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_S)
                try:
                    self._connection.request(method, path, body=body, headers=headers)
                    response = self._connection.getresponse()
                    return response.status, response.read()
                except (http.client.HTTPException, OSError) as exc:
                    self._connection.close()
                    self._connection = None
                    if attempt == 2 or isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                        raise ModelDown(f"the model server does not answer at {self.rest_url} ({exc})") from None

    def metadata(self) -> dict:
        """Name, version, state and the image signature's inputs and outputs, from the server itself."""
        status_code, body = self._rest("GET", f"/v1/models/{self.model}")
        if status_code != 200:
            raise ModelDown(f"{self.rest_url}/v1/models/{self.model}: HTTP {status_code}: {_error_of(body)}")
        versions = json.loads(body).get("model_version_status", [])
        status_code, body = self._rest("GET", f"/v1/models/{self.model}/metadata")
        if status_code != 200:
            raise ModelDown(f"{self.rest_url}/v1/models/{self.model}/metadata: HTTP {status_code}: {_error_of(body)}")
        answer = json.loads(body)
        signatures = answer.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        signature = signatures.get(IMAGE_SIGNATURE, {})
        return {"name": answer.get("model_spec", {}).get("name", self.model),
                "version": answer.get("model_spec", {}).get("version"),
                "state": versions[0].get("state") if versions else None,
                "signature": IMAGE_SIGNATURE, "signatures": sorted(s for s in signatures if not s.startswith("__")),
                "inputs": {k: v.get("dtype") for k, v in signature.get("inputs", {}).items()},
                "outputs": {k: v.get("dtype") for k, v in signature.get("outputs", {}).items()},
                "rest_url": self.rest_url, "grpc_target": self.grpc_target}

    def predict_rest(self, image: bytes, labels: Sequence[str], k: int) -> Answer:
        body = image_rest_body(image)
        started = time.perf_counter()
        status_code, answer = self._rest("POST", f"/v1/models/{self.model}:predict", body)
        latency = (time.perf_counter() - started) * 1000
        if status_code != 200:
            return Answer("REST", latency, len(body), error=f"HTTP {status_code}: {_error_of(answer)}")
        return Answer("REST", latency, len(body), top_classes(probabilities_from_rest(answer), labels, k))

    def predict_grpc(self, image: bytes, labels: Sequence[str], k: int) -> Answer:
        import grpc

        request = image_grpc_request(image, model=self.model)
        started = time.perf_counter()
        try:
            response = self._predict(request, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            latency = (time.perf_counter() - started) * 1000
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ModelDown(f"the model server does not answer at {self.grpc_target} "
                                f"({error.code().name}: {error.details()})") from None
            return Answer("gRPC", latency, request.ByteSize(), error=f"{error.code().name}: {error.details()}")
        latency = (time.perf_counter() - started) * 1000
        return Answer("gRPC", latency, request.ByteSize(), top_classes(probabilities_from_grpc(response), labels, k))


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:300].decode(errors="replace")))
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")
