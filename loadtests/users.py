"""Locust users: RestUser (FastHttpUser) and GrpcUser (official tensorflow-serving-api stubs).

Both send the prepared payloads of the run's LoadContext in the same order, check every answer
against the model's in-process answer, and fire `environment.events.request` with name = the
model and request_type = "REST" / "gRPC", timed with time.perf_counter(). Imported only by
loadtests/locustfile.py, after Locust has monkey-patched and gRPC has been made gevent-safe.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Optional

import grpc
from locust import FastHttpUser, User, constant, task

from loadtests.payloads import PayloadSet, probabilities_from_grpc, probabilities_from_rest

JSON_HEADERS = {"Content-Type": "application/json"}
CONTEXT_WAIT_S = 150.0


class WrongAnswer(Exception):
    """A response arrived but is not the model's answer for the image sent."""


@dataclass
class LoadContext:
    """What every user of a run shares: the model, where it is served, the rendered requests."""
    model: str
    payload: str
    rest_url: str
    grpc_target: str
    payloads: PayloadSet
    rest_bodies: list[bytes] = field(default_factory=list)
    grpc_requests: list = field(default_factory=list)
    _users: itertools.count = field(default_factory=itertools.count)

    @property
    def rest_path(self) -> str:
        return f"/v1/models/{self.model}:predict"

    def first_image(self) -> int:
        """Each new user starts one image further, so concurrent users do not send the same image in step."""
        return next(self._users) % len(self.payloads)


def shared_context(environment) -> LoadContext:
    """The run's LoadContext, once ready (a Locust worker renders it when its master's payloads arrive)."""
    ready = getattr(environment, "loadtest_ready", None)
    if ready is not None and not ready.wait(timeout=CONTEXT_WAIT_S):
        raise RuntimeError(f"the run's payloads were not ready within {CONTEXT_WAIT_S:.0f}s (no answer from the master)")
    return environment.loadtest


class RestUser(FastHttpUser):
    """POST /v1/models/<model>:predict with the run's JSON bodies, back to back."""
    wait_time = constant(0)
    host = "http://127.0.0.1:8501"  # replaced by --rest-url (or Locust's host field) when a test starts

    def on_start(self) -> None:
        self.ctx: LoadContext = shared_context(self.environment)
        self.index = self.ctx.first_image()

    @task
    def predict(self) -> None:
        ctx, i = self.ctx, self.index
        self.index = (i + 1) % len(ctx.payloads)
        with self.client.post(ctx.rest_path, data=ctx.rest_bodies[i], headers=JSON_HEADERS, name=ctx.model,
                              context={"image": i}, catch_response=True) as response:
            response.request_meta["request_type"] = "REST"
            if response.status_code != 200:
                detail = (response.text or "")[:300] if response.status_code else str(response.error)
                response.failure(f"HTTP {response.status_code}: {detail}")
                return
            try:
                problem = ctx.payloads.check(i, probabilities_from_rest(response.content))
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"unreadable :predict answer ({exc})"
            if problem:
                response.failure(problem)


class _TimingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Times each call, checks its answer and fires the Locust request event: the one place gRPC is measured."""

    def __init__(self, user: "GrpcUser"):
        self.user = user

    def intercept_unary_unary(self, continuation, client_call_details, request):
        user = self.user
        start_time = time.time()
        started = time.perf_counter()
        call = continuation(client_call_details, request)
        exception: Optional[BaseException] = call.exception()
        response_time = (time.perf_counter() - started) * 1000
        length = 0
        if exception is None:
            response = call.result()
            length = response.ByteSize()
            try:
                problem = user.ctx.payloads.check(user.index, probabilities_from_grpc(response))
            except ValueError as exc:
                problem = f"unreadable PredictResponse ({exc})"
            if problem:
                exception = WrongAnswer(problem)
        elif isinstance(exception, grpc.RpcError):
            exception = WrongAnswer(f"{exception.code().name}: {exception.details()}")
        user.environment.events.request.fire(
            request_type="gRPC", name=user.ctx.model, response_time=response_time, response_length=length,
            exception=exception, context={"image": user.index}, start_time=start_time,
            url=f"grpc://{user.ctx.grpc_target}{client_call_details.method}", response=None)
        return call


class GrpcUser(User):
    """PredictionService.Predict with the run's PredictRequests, back to back, one channel per user."""
    wait_time = constant(0)

    def on_start(self) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.ctx: LoadContext = shared_context(self.environment)
        self.index = self.ctx.first_image()
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.insecure_channel(self.ctx.grpc_target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.intercept_channel(self.channel, _TimingInterceptor(self)))

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def predict(self) -> None:
        try:
            self.stub.Predict(self.ctx.grpc_requests[self.index], timeout=60)
        except grpc.RpcError:
            pass  # already reported as a failure by the interceptor
        self.index = (self.index + 1) % len(self.ctx.payloads)
