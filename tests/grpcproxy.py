"""A gRPC proxy that holds every call for a fixed delay before forwarding it: network latency on loopback."""
from __future__ import annotations

import time
from concurrent import futures

import grpc

from server.process import free_port


class DelayProxy:
    """Forwards every unary call, as raw bytes, to `target` after `delay_s`; listens on 127.0.0.1."""

    def __init__(self, target: str, delay_s: float, threads: int = 32):
        self.delay_s = delay_s
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.calls = 0
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                               ("grpc.max_send_message_length", 64 << 20)])
        self._server = grpc.server(futures.ThreadPoolExecutor(threads),
                                   options=[("grpc.max_receive_message_length", 64 << 20),
                                            ("grpc.max_send_message_length", 64 << 20)])
        self._server.add_generic_rpc_handlers([_Forward(self)])
        self._server.add_insecure_port(self.target)

    def __enter__(self) -> "DelayProxy":
        self._server.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._server.stop(grace=None)
        self._channel.close()


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, proxy: DelayProxy):
        self.proxy = proxy

    def service(self, details):
        upstream = self.proxy._channel.unary_unary(details.method)  # no serializers: bytes in, bytes out

        def forward(request: bytes, context):
            time.sleep(self.proxy.delay_s)
            self.proxy.calls += 1
            try:
                return upstream(request, timeout=context.time_remaining())
            except grpc.RpcError as error:
                context.abort(error.code(), error.details())
        return grpc.unary_unary_rpc_method_handler(forward)
