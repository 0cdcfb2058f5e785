"""gRPC front end: tensorflow.serving.PredictionService and ModelService over the shared DataPlane.

Named grpc_api.py (not grpc.py) so it can never shadow the grpc package. Status codes come from the
one error table; messages longer than 1024 characters are truncated as TF Serving does.
"""
from __future__ import annotations

import logging
import time
from concurrent import futures
from typing import Optional

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from server.configs import model_configs_from_proto
from server.dataplane import CLASSIFY, DataPlane, Resolved, Target, examples_from_input
from server.errors import Code, InvalidArgument, ServingError, as_serving_error, grpc_code
from server.metrics import Metrics
from server.profiler import ProfilerService
from server.repository import Repository
from server.tensors.proto import array_to_proto, proto_to_array

MAX_MESSAGE = 2**31 - 1
HEALTH_SERVICES = ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService")
log = logging.getLogger("server.grpc")


def _abort(context, error: ServingError):
    message = error.message if len(error.message) <= 1024 else error.message[:1024] + "...TRUNCATED"
    context.abort(grpc.StatusCode[grpc_code(error).name], message)


def _target(request_spec, has_spec: bool) -> Target:
    if not has_spec:
        raise InvalidArgument("Missing ModelSpec")
    version = request_spec.version.value if request_spec.HasField("version") else None
    label = request_spec.version_label if request_spec.WhichOneof("version_choice") == "version_label" else None
    return Target(request_spec.name, version, label, request_spec.signature_name)


def _fill_spec(message, resolved: Resolved) -> None:
    message.name = resolved.name
    message.version.value = resolved.version
    message.signature_name = resolved.signature_name


class ErrorMapping(grpc.ServerInterceptor):
    """The one place a gRPC call's exception becomes a status: the error table for ServingErrors, INTERNAL for
    anything unexpected (logged with its traceback). Servicers raise; they never abort themselves."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        def guarded(request, context):
            try:
                return behavior(request, context)
            except Exception as exc:
                if not isinstance(exc, ServingError):
                    log.exception("internal error in %s", handler_call_details.method)
                _abort(context, as_serving_error(exc))

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: Metrics, tensor_content: bool = False):
        self.dataplane = dataplane
        self.metrics = metrics
        self.tensor_content = tensor_content

    def _call(self, api: str, context, model_name: str, work):
        started = time.perf_counter()
        try:
            result = work()
        except Exception as exc:  # counted here, turned into a status by ErrorMapping
            if api:
                self.metrics.record_request(model_name, api, "GRPC", as_serving_error(exc).code.name, 0)
            raise
        if api:
            self.metrics.record_request(model_name, api, "GRPC", "OK", (time.perf_counter() - started) * 1e6)
        return result

    def Predict(self, request, context):
        def work():
            target = _target(request.model_spec, request.HasField("model_spec"))
            decode = lambda signature: {alias: proto_to_array(proto) for alias, proto in request.inputs.items()}
            resolved, outputs = self.dataplane.predict(target, decode, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, resolved)
            for alias, array in outputs.items():
                response.outputs[alias].CopyFrom(array_to_proto(array, as_content=self.tensor_content))
            return response
        return self._call("Predict", context, request.model_spec.name, work)

    def Classify(self, request, context):
        def work():
            target = _target(request.model_spec, request.HasField("model_spec"))
            resolved, results = self.dataplane.classify(target, examples_from_input(request.input))
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response.model_spec, resolved)
            _fill_classifications(response.result, results)
            return response
        return self._call("Classify", context, request.model_spec.name, work)

    def Regress(self, request, context):
        def work():
            target = _target(request.model_spec, request.HasField("model_spec"))
            resolved, values = self.dataplane.regress(target, examples_from_input(request.input))
            response = regression_pb2.RegressionResponse()
            _fill_spec(response.model_spec, resolved)
            response.result.regressions.extend(regression_pb2.Regression(value=v) for v in values)
            return response
        return self._call("Regress", context, request.model_spec.name, work)

    def MultiInference(self, request, context):
        def work():
            tasks = [(Target(t.model_spec.name, t.model_spec.version.value if t.model_spec.HasField("version")
                             else None, None, t.model_spec.signature_name), t.method_name) for t in request.tasks]
            results = self.dataplane.multi_inference(tasks, examples_from_input(request.input))
            response = inference_pb2.MultiInferenceResponse()
            for resolved, method, output in results:
                result = response.results.add()
                _fill_spec(result.model_spec, resolved)
                if method == CLASSIFY:
                    _fill_classifications(result.classification_result, output)
                else:
                    result.regression_result.regressions.extend(regression_pb2.Regression(value=v) for v in output)
            return response
        return self._call("", context, "", work)

    def GetModelMetadata(self, request, context):
        def work():
            target = _target(request.model_spec, request.HasField("model_spec"))
            resolved, signature_defs = self.dataplane.metadata(target, list(request.metadata_field))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = resolved.name
            response.model_spec.version.value = resolved.version
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in signature_defs.items():
                sig_map.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(sig_map)
            return response
        return self._call("", context, "", work)


def _fill_classifications(result, rows) -> None:
    for row in rows:
        classifications = result.classifications.add()
        for label, score in row:
            classifications.classes.add(label=label, score=score)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane, repository: Repository, metrics: Metrics):
        self.dataplane = dataplane
        self.repository = repository
        self.metrics = metrics

    def GetModelStatus(self, request, context):
        target = _target(request.model_spec, request.HasField("model_spec"))
        states = self.dataplane.status(target.name, target.version)
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in states:
            entry = response.model_version_status.add(version=state.version)
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.error_code = int(state.error_code)
            entry.status.error_message = state.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.repository.reload(model_configs_from_proto(request.config))
        except ServingError as error:
            response.status.error_code = int(error.code)
            response.status.error_message = error.message
            context.set_code(grpc.StatusCode[grpc_code(error).name])
            context.set_details(error.message)
            return response
        response.status.error_code = int(Code.OK)
        for name in request.metric_names:
            response.metric.add(name=name, int64_value_increase=0)
        return response


class BindError(Exception):
    """gRPC could not listen on an address (taken, or not ours); TF Serving's status for it."""


class GrpcServer:
    """Both services on host:port (None: no TCP port, 0: a free one) and, if given, unix:socket_path; message
    sizes up to max_request_bytes.

    SO_REUSEPORT is off, so a port another process holds is an error here, not a second server beside it.
    """

    def __init__(self, dataplane: DataPlane, repository: Repository, metrics: Metrics, host: str,
                 port: Optional[int],
                 max_threads: int, max_request_bytes: int, tensor_content: bool = False,
                 credentials: Optional[grpc.ServerCredentials] = None, channel_args: tuple = (),
                 socket_path: str = "", health: bool = False, profiler: bool = False):
        options = [("grpc.max_receive_message_length", min(max_request_bytes, MAX_MESSAGE)),
                   ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0), *channel_args]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
                                   options=options, maximum_concurrent_rpcs=None, interceptors=(ErrorMapping(),))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(dataplane, metrics, tensor_content), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(dataplane, repository, metrics),
                                                                  self._server)
        self.health = None
        if health:
            from grpc_health.v1 import health as grpc_health, health_pb2, health_pb2_grpc

            self.health = grpc_health.HealthServicer()
            for service in HEALTH_SERVICES:
                self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if profiler:  # tensorflow.ProfilerService on this port, as TF Serving's --enable_profiler

            self._server.add_generic_rpc_handlers((ProfilerService().handler(),))
        self.port = self._listen(f"{host}:{port}", credentials) if port is not None else 0  # 0: a free port
        self.socket_path = socket_path
        if socket_path:
            self._listen(f"unix:{socket_path}", credentials)

    def _listen(self, address: str, credentials) -> int:
        try:
            return (self._server.add_secure_port(address, credentials) if credentials
                    else self._server.add_insecure_port(address))
        except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
            log.error("gRPC cannot listen on %s: %s", address, exc)
            raise BindError("Failed to BuildAndStart gRPC server") from None

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
