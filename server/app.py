"""Build and run the server from flags: repository -> data plane -> REST + gRPC (ports injectable)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from server.batching import Batcher
from server.configs import (ConfigError, ModelConfig, load_batching_parameters, load_model_config_file,
                            load_monitoring_config, load_ssl_config)
from server.dataplane import WARMUP_FILE, DataPlane, direct_runner
from server.errors import ServingError
from server.flags import NO_EFFECT, Flags
from server.metrics import Metrics
from server.model import LoadOptions
from server.repository import Repository
from server.rest import RestApi, RestServer

log = logging.getLogger("server")


class StartupError(Exception):
    """The server cannot start; printed as `Failed to start server. Error: <CODE>: <message>` (TF Serving's
    status text), on stdout, with exit status 255."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(f"{code}: {message}")


def _config_failure(exc: ConfigError) -> StartupError:
    if exc.detail:
        log.error("%s", exc.detail)  # stderr, where TF Serving's protobuf parser writes it
    return StartupError(str(exc))


def _model_configs(flags: Flags) -> list[ModelConfig]:
    if flags.model_config_file:
        try:
            return load_model_config_file(flags.model_config_file)
        except ConfigError as exc:
            raise _config_failure(exc) from None
    if not flags.model_base_path:
        raise StartupError("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if not Path(flags.model_base_path).is_absolute() and "://" not in flags.model_base_path:
        raise StartupError(f"Expected model {flags.model_name} to have an absolute path or URI; "
                           f"got base_path()={flags.model_base_path}")
    return [ModelConfig(name=flags.model_name, base_path=flags.model_base_path)]


class Server:
    def __init__(self, flags: Flags):

        self.flags = flags
        if flags.rest_api_port and flags.rest_api_port == flags.port:
            raise StartupError("server_options.http_port cannot be same as grpc_port. Please use a different "
                               "port for HTTP/REST API.")
        if not flags.port and not flags.grpc_socket_path:
            raise StartupError("At least one of server_options.grpc_port or server_options.grpc_socket_path "
                               "must be set.")
        if flags.batching_parameters_file and not flags.enable_batching:
            raise StartupError("server_options.batching_parameters_file is set without setting "
                               "server_options.enable_batching to true.")
        if flags.tensorflow_intra_op_parallelism > 0 and flags.tensorflow_inter_op_parallelism > 0 \
                and flags.tensorflow_session_parallelism > 0:
            raise StartupError("Either configure server_options.tensorflow_session_parallelism or "
                               "(server_options.tensorflow_intra_op_parallelism, "
                               "server_options.tensorflow_inter_op_parallelism) separately. Cannot configure both.")
        for name in sorted(NO_EFFECT):
            if getattr(flags, name) != getattr(Flags(), name):
                log.warning("--%s is accepted for compatibility but has no effect in the embedded server", name)
        if flags.use_alts_credentials and flags.ssl_config_file:
            raise StartupError("Either use_alts_credentials must be false or ssl_config_file must be empty.")
        try:
            self.ssl_config = load_ssl_config(flags.ssl_config_file) if flags.ssl_config_file else None
            self.monitoring = load_monitoring_config(flags.monitoring_config_file)
            batching = load_batching_parameters(flags.batching_parameters_file) if flags.enable_batching else None
        except ConfigError as exc:
            raise _config_failure(exc) from None
        if batching is not None and batching.pad_variable_length_inputs:
            log.warning("pad_variable_length_inputs: true in %s has no effect in the embedded server: requests whose "
                        "inputs differ beyond the batch dimension are batched in separate queues, never padded",
                        flags.batching_parameters_file)
        self.configs = _model_configs(flags)
        parallel = flags.tensorflow_session_parallelism
        options = LoadOptions(tags=tuple(t for t in flags.saved_model_tags.split(",") if t),
                              intra_op_parallelism=flags.tensorflow_intra_op_parallelism or parallel,
                              inter_op_parallelism=flags.tensorflow_inter_op_parallelism or parallel,
                              timeout_ms=flags.rest_api_timeout_in_ms, prefer_tflite=flags.prefer_tflite_model)
        self.metrics = Metrics()
        self.batcher = None
        runner = direct_runner
        if batching is not None:
            self.batcher = runner = Batcher(batching, direct_runner, self.metrics)
        self.repository = Repository(
            self.configs, options, poll_seconds=flags.file_system_poll_wait_seconds,
            warmup=self._warmup if flags.enable_model_warmup else None,
            max_load_retries=flags.max_num_load_retries, retry_interval_s=flags.load_retry_interval_micros / 1e6,
            allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models, metrics=self.metrics,
            load_threads=flags.num_load_threads)
        self.dataplane = DataPlane(self.repository, runner, self.metrics)
        self.grpc = self.rest = None
        self._config_poller: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def _warmup(self, name: str, version: int, model) -> None:
        count = self.dataplane.warmup(name, version, model, self.flags.num_request_iterations_for_warmup)
        if count:
            log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                     model.path, count)
        else:
            log.info("No warmup data file found at %s", Path(model.path) / WARMUP_FILE)

    def start(self) -> None:
        """Load every model (blocking), then start gRPC and REST."""
        # deferred: tensorflow_serving's protos import TensorFlow (seconds); a flag mistake is answered without it
        from server.grpc_api import BindError, GrpcServer

        try:
            self.repository.start()
        except ServingError as exc:
            raise StartupError(exc.message, exc.code.name) from None
        flags = self.flags
        if flags.port or flags.grpc_socket_path:
            channel_args = tuple(_channel_args(flags.grpc_channel_arguments))
            try:
                self.grpc = GrpcServer(self.dataplane, self.repository, self.metrics, flags.host, flags.port or None,
                                       flags.grpc_max_threads, flags.max_request_bytes,
                                       flags.enable_serialization_as_tensor_content, credentials=self._credentials(),
                                       channel_args=channel_args, socket_path=flags.grpc_socket_path,
                                       health=flags.enable_grpc_healthcheck_service,
                                       profiler=flags.enable_profiler)
            except BindError as exc:
                raise StartupError(str(exc)) from None
            self.grpc.start()
        if flags.rest_api_port:
            prometheus = self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None
            api = RestApi(self.dataplane, self.metrics, flags.rest_api_enable_cors_support, prometheus)
            try:
                self.rest = RestServer(api, flags.host, flags.rest_api_port, flags.rest_api_num_threads,
                                       flags.max_request_bytes)
            except OSError as exc:
                raise StartupError(f"cannot bind REST to {flags.host}:{flags.rest_api_port}: {exc.strerror}") \
                    from None
            self.rest.start()
        if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config, name="config-poller", daemon=True)
            self._config_poller.start()

    def _credentials(self):
        """gRPC TLS credentials from --ssl_config_file, or None (insecure, TF Serving's default)."""
        if not self.flags.ssl_config_file:
            return None
        import grpc

        ssl = self.ssl_config
        return grpc.ssl_server_credentials([(ssl.server_key.encode(), ssl.server_cert.encode())],
                                           root_certificates=ssl.custom_ca.encode() or None,
                                           require_client_auth=ssl.client_verify)

    def _poll_config(self) -> None:
        while not self._stop.wait(self.flags.model_config_file_poll_wait_seconds):
            try:
                configs = load_model_config_file(self.flags.model_config_file)
                if configs != self.configs:
                    self.repository.reload(configs)
                    self.configs = configs
            except (ConfigError, ServingError) as exc:
                log.error("model config reload failed, keeping the current config: %s", exc)

    def startup_lines(self) -> list[str]:
        """TF Serving's startup lines (logged to stderr once every model is loaded, as TF Serving logs them)."""
        lines = []
        if self.grpc and self.grpc.port:
            lines.append(f"Running gRPC ModelServer at {self.flags.host}:{self.grpc.port} ...")
        if self.grpc and self.grpc.socket_path:
            lines.append(f"Running gRPC ModelServer at UNIX socket {self.grpc.socket_path} ...")
        if self.rest:
            lines.append(f"Exporting HTTP/REST API at:{self.flags.host}:{self.rest.port} ...")
        return lines

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, drain in-flight requests, unload models."""
        self._stop.set()
        if self.rest:
            self.rest.stop()
        if self.grpc:
            self.grpc.stop(grace)
        if self.batcher:
            self.batcher.stop()
        self.repository.stop()


def _channel_args(text: str):
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        try:
            yield key, int(value)
        except ValueError:
            yield key, value
