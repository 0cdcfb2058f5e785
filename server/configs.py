"""TF Serving's text-proto config files: model config, batching parameters, monitoring config, SSL config.

The model config uses the ModelServerConfig proto shipped in tensorflow-serving-api. The batching
(BatchingParameters), monitoring (MonitoringConfig) and SSL (SSLConfig) protos are not in that package, so their
messages are declared here with the same field names and numbers as TF Serving's .proto files,
which makes `text_format` accept exactly the files TF Serving accepts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from server.errors import InvalidArgument


class ConfigError(Exception):
    """A config file cannot be used; one line naming the file and the problem.

    `detail` is the parser's own line, which TF Serving's protobuf library writes to stderr (the status,
    on stdout, only names the file)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: str = "latest"               # latest | all | specific
    num_versions: int = 1                # latest
    versions: tuple[int, ...] = ()       # specific
    labels: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class BatchingParameters:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    thread_pool_name: str = "batch_threads"  # names the queuing_latency series


@dataclass(frozen=True)
class MonitoringConfig:
    prometheus_enabled: bool = False
    prometheus_path: str = "/monitoring/prometheus/metrics"


def _message_classes():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(name="tfserve_bench_configs.proto", package="tensorflow.serving",
                                              dependency=["google/protobuf/wrappers.proto"], syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    batching = proto.message_type.add(name="BatchingParameters")
    for name, number, type_name in [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                    ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                    ("thread_pool_name", 5, "StringValue"),
                                    ("enable_large_batch_splitting", 8, "BoolValue"),
                                    ("max_execution_batch_size", 9, "Int64Value")]:
        batching.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                           type_name=f".google.protobuf.{type_name}")
    batching.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    sampling = proto.message_type.add(name="SamplingConfig")
    sampling.field.add(name="sampling_rate", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    monitoring.field.add(name="sampling_config", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.SamplingConfig")
    ssl = proto.message_type.add(name="SSLConfig")
    for name, number in (("server_key", 1), ("server_cert", 2), ("custom_ca", 3)):
        ssl.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    ssl.field.add(name="client_verify", number=4, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pool.Add(proto)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
            get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
            get(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")))


def _parse(path: str, message, kind: str):
    from google.protobuf import text_format

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{kind} file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"Invalid protobuf file: '{path}'",
                          detail=f"Error parsing text-format {message.DESCRIPTOR.full_name}: {exc}") from None


def model_configs_from_proto(config) -> list[ModelConfig]:
    """ModelServerConfig proto -> validated ModelConfigs (TF Serving's messages for each violation)."""
    if config.WhichOneof("config") != "model_config_list":
        raise InvalidArgument("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                              "Only ModelConfigList is currently supported")
    result, seen = [], set()
    for entry in config.model_config_list.config:
        if entry.name in seen:
            raise InvalidArgument(f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        if not entry.model_platform and not entry.model_type:
            raise InvalidArgument("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                                  f"ModelServerConfig::model_platform, model name is {entry.name}")
        if entry.model_platform and entry.model_platform != "tensorflow":
            raise InvalidArgument(f"Model {entry.name}: platform '{entry.model_platform}' is not supported by "
                                  "this server; use 'tensorflow'")
        if "://" not in entry.base_path and not entry.base_path.startswith("/"):
            raise InvalidArgument(f"Expected model {entry.name} to have an absolute path or URI; "
                                  f"got base_path()={entry.base_path}")
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        result.append(ModelConfig(
            name=entry.name, base_path=entry.base_path, policy=policy,
            num_versions=max(1, entry.model_version_policy.latest.num_versions),
            versions=tuple(sorted(entry.model_version_policy.specific.versions)),
            labels=dict(entry.version_labels)))
    return result


def load_model_config_file(path: str) -> list[ModelConfig]:
    """Read a --model_config_file."""
    from tensorflow_serving.config import model_server_config_pb2

    message = _parse(path, model_server_config_pb2.ModelServerConfig(), "model config")
    try:
        return model_configs_from_proto(message)
    except InvalidArgument as exc:
        raise ConfigError(f"{path}: {exc.message}") from None


def load_batching_parameters(path: Optional[str]) -> BatchingParameters:
    """Read a --batching_parameters_file (None gives TF Serving's defaults)."""
    if not path:
        return BatchingParameters(thread_pool_name="model_server_batch_threads")
    batching_class, _, _ = _message_classes()
    message = _parse(path, batching_class(), "batching parameters")
    defaults = BatchingParameters()

    def value(name, default):
        return getattr(message, name).value if message.HasField(name) else default

    params = BatchingParameters(
        max_batch_size=value("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=value("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(message.allowed_batch_sizes),
        pad_variable_length_inputs=message.pad_variable_length_inputs,
        thread_pool_name=value("thread_pool_name", defaults.thread_pool_name))
    sizes = params.allowed_batch_sizes
    if sizes and sizes[-1] != params.max_batch_size:
        raise ConfigError(f"{path}: Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                          f"{sizes[-1]}; expected {params.max_batch_size}")
    if sizes and list(sizes) != sorted(set(sizes)):
        raise ConfigError(f"{path}: allowed_batch_sizes entries must be monotonically increasing")
    if params.max_batch_size < 1 or params.num_batch_threads < 1 or params.max_enqueued_batches < 1:
        raise ConfigError(f"{path}: max_batch_size, num_batch_threads and max_enqueued_batches must be positive")
    return params


def load_monitoring_config(path: Optional[str]) -> MonitoringConfig:
    """Read a --monitoring_config_file (None: Prometheus off)."""
    if not path:
        return MonitoringConfig()
    _, monitoring_class, _ = _message_classes()
    message = _parse(path, monitoring_class(), "monitoring config")
    return MonitoringConfig(prometheus_enabled=message.prometheus_config.enable,
                            prometheus_path=message.prometheus_config.path or "/monitoring/prometheus/metrics")


@dataclass(frozen=True)
class SslConfig:
    """TF Serving's SSLConfig: PEM contents inline; client_verify requires and verifies client certificates."""
    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False


def load_ssl_config(path: str) -> SslConfig:
    """Read an --ssl_config_file (SSLConfig text proto) for gRPC TLS; REST has no TLS in TF Serving."""
    _, _, ssl_class = _message_classes()
    message = _parse(path, ssl_class(), "SSL config")
    if not message.server_key or not message.server_cert:
        raise ConfigError(f"{path}: server_key and server_cert (PEM text) are both required for gRPC TLS")
    if message.client_verify and not message.custom_ca:
        raise ConfigError(f"{path}: client_verify needs custom_ca, the PEM of the CA that signs client certificates")
    for name in ("server_key", "server_cert", "custom_ca"):
        value = getattr(message, name)
        if value and "-----BEGIN" not in value:
            raise ConfigError(f"{path}: {name} is not PEM text (no -----BEGIN line): paste the file's contents, "
                              "not its path")
    return SslConfig(message.server_key, message.server_cert, message.custom_ca, message.client_verify)
