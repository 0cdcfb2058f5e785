"""gRPC front end: tensorflow.serving.PredictionService and ModelService over the shared DataPlane.

Named grpc_api.py (not grpc.py) so it can never shadow the grpc package. Status codes come from the
one error table; messages longer than 1024 characters are truncated as TF Serving does.
"""
from __future__ import annotations

import time
from concurrent import futures
from typing import Optional

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from deploy.server.configs import model_configs_from_proto
from deploy.server.dataplane import CLASSIFY, DataPlane, Resolved, Target, examples_from_input
from deploy.server.errors import Code, InvalidArgument, ServingError, grpc_code
from deploy.server.metrics import Metrics
from deploy.server.repository import Repository
from deploy.server.tensors import array_to_proto, proto_to_array

MAX_MESSAGE = 2**31 - 1


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


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: Metrics, tensor_content: bool = False):
        self.dataplane = dataplane
        self.metrics = metrics
        self.tensor_content = tensor_content

    def _call(self, api: str, context, model_name: str, work):
        started = time.perf_counter()
        try:
            result = work()
        except ServingError as error:
            if api:
                self.metrics.record_request(model_name, api, "GRPC", error.code.name, 0)
            _abort(context, error)
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
        try:
            target = _target(request.model_spec, request.HasField("model_spec"))
            states = self.dataplane.status(target.name, target.version)
        except ServingError as error:
            _abort(context, error)
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


class GrpcServer:
    """Both services on host:port (0 picks a free port); message sizes up to max_request_bytes."""

    def __init__(self, dataplane: DataPlane, repository: Repository, metrics: Metrics, host: str, port: int,
                 max_threads: int, max_request_bytes: int, tensor_content: bool = False,
                 credentials: Optional[grpc.ServerCredentials] = None, channel_args: tuple = ()):
        options = [("grpc.max_receive_message_length", min(max_request_bytes, MAX_MESSAGE)),
                   ("grpc.max_send_message_length", MAX_MESSAGE), *channel_args]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
                                   options=options, maximum_concurrent_rpcs=None)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(dataplane, metrics, tensor_content), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(dataplane, repository, metrics),
                                                                  self._server)
        address = f"{host}:{port}"
        self.port = (self._server.add_secure_port(address, credentials) if credentials
                     else self._server.add_insecure_port(address))

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        self._server.stop(grace).wait()
