"""Readiness: a model is ready when REST model status and gRPC GetModelStatus both say AVAILABLE.

Timeouts raise NotReady naming the endpoint, what was last seen, a hint and the server's last log
lines, so a user sees why a deployment did not come up without digging for logs.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

from loadtests.drive import wire
from spec.errors import HarnessError


class NotReady(HarnessError):
    """The model did not become available in time; the message says where, what was seen and why."""


@dataclass(frozen=True)
class Endpoints:
    host: str
    rest_port: int
    grpc_port: int
    model: str

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def status_url(self) -> str:
        return f"{self.rest_url}/v1/models/{self.model}"


def rest_status(endpoints: Endpoints, timeout: float = 2.0) -> str:
    """'AVAILABLE', another version state, or a short description of why there is no answer."""
    try:
        with urllib.request.urlopen(endpoints.status_url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return f"HTTP {error.code}: {json.loads(error.read()).get('error', '')}"
        except ValueError:
            return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"no answer ({getattr(error, 'reason', error)})"
    states = [v.get("state") for v in body.get("model_version_status", [])]
    return "AVAILABLE" if "AVAILABLE" in states else f"versions {states or 'none'}"


def version_states(channel, model: str, timeout: float = 2.0) -> dict[int, str]:
    """{version: state name (AVAILABLE, LOADING, END, ...)} from ModelService.GetModelStatus over an open gRPC
    `channel`; grpc.RpcError when the server cannot answer. Without TensorFlow's stubs (loadtests.drive.wire): a
    wait for a server must not pay seconds of TensorFlow import when its model has just become available."""
    request = wire.GetModelStatusRequest()
    request.model_spec.name = model
    reply = wire.model_status_method(channel)(request, timeout=timeout)
    return {int(v.version): wire.VERSION_STATES.get(v.state, f"state {v.state}") for v in reply.model_version_status}


def grpc_status(endpoints: Endpoints, timeout: float = 2.0) -> str:
    """Same as rest_status, through ModelService.GetModelStatus."""
    import grpc

    with grpc.insecure_channel(endpoints.grpc_target) as channel:
        try:
            states = list(version_states(channel, endpoints.model, timeout).values())
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"
    return "AVAILABLE" if "AVAILABLE" in states else f"versions {states or 'none'}"


def wait_ready(endpoints: Endpoints, timeout_s: float, logs: Optional[Callable[[], str]] = None,
               alive: Optional[Callable[[], Optional[str]]] = None, interval_s: float = 0.5) -> float:
    """Block until both protocols report the model AVAILABLE; returns the seconds waited.

    `alive` returns None while the server runs, or why it stopped (then waiting ends at once);
    `logs` returns the server's output for the error message.
    """
    started = time.monotonic()
    seen = {"REST": "not asked yet", "gRPC": "not asked yet"}
    while True:
        seen["REST"] = rest_status(endpoints)
        if seen["REST"] == "AVAILABLE":
            seen["gRPC"] = grpc_status(endpoints)
            if seen["gRPC"] == "AVAILABLE":
                return time.monotonic() - started
        stopped = alive() if alive else None
        if stopped or time.monotonic() - started > timeout_s:
            reason = stopped or f"not AVAILABLE after {timeout_s:.0f}s"
            tail = "\n".join((logs() if logs else "").strip().splitlines()[-15:])
            raise NotReady(
                f"model '{endpoints.model}' at {endpoints.status_url} (gRPC {endpoints.grpc_target}): {reason}; "
                f"last seen REST: {seen['REST']}, gRPC: {seen['gRPC']}. Hint: check that an exported version "
                f"exists (make export) and the ports are free; raise serving.readiness_timeout_s for slow models."
                + (f"\nlast server log lines:\n{tail}" if tail else ""))
        time.sleep(interval_s)
