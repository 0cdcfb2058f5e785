"""tensorflow_model_server's command line, parsed with TensorFlow's rules (command_line_flags.cc).

Only `--name=value` is accepted; bools also take a bare `--name`. A bad value or --help prints the
usage and exits 255; unknown arguments are reported and ignored (TF Serving keeps running too).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from typing import Sequence

CPUS = os.cpu_count() or 1


@dataclass
class Flags:
    port: int = 8500
    grpc_socket_path: str = ""
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * CPUS
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    enable_batching: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    num_load_threads: int = 0
    num_unload_threads: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    file_system_poll_wait_seconds: int = 1
    flush_filesystem_caches: bool = True
    tensorflow_session_parallelism: int = 0
    tensorflow_session_config_file: str = ""
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    use_alts_credentials: bool = False
    ssl_config_file: str = ""
    platform_config_file: str = ""
    per_process_gpu_memory_fraction: float = 0.0
    saved_model_tags: str = "serve"
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 4 * CPUS
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    version: bool = False
    monitoring_config_file: str = ""
    remove_unused_fields_from_bundle_metagraph: bool = True
    prefer_tflite_model: bool = False
    num_tflite_pools: int = CPUS
    num_tflite_interpreters_per_pool: int = 1
    enable_signature_method_name_check: bool = False
    xla_cpu_compilation_enabled: bool = False
    xla_gpu_compilation_enabled: bool = False
    enable_profiler: bool = True
    thread_pool_factory_config_file: str = ""
    mixed_precision: str = ""
    skip_initialize_tpu: bool = False
    enable_grpc_healthcheck_service: bool = False
    enable_serialization_as_tensor_content: bool = False
    # Ours, not TF Serving's:
    host: str = "127.0.0.1"
    max_request_bytes: int = 64 * 1024 * 1024


# Flags accepted for compatibility whose effect does not apply to the embedded server (said at startup).
NO_EFFECT = {"enable_per_model_batching_parameters", "num_unload_threads",
             "flush_filesystem_caches", "tensorflow_session_config_file", "platform_config_file",
             "per_process_gpu_memory_fraction", "remove_unused_fields_from_bundle_metagraph",
             "num_tflite_pools", "num_tflite_interpreters_per_pool", "enable_signature_method_name_check",
             "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled",
             "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
             "use_alts_credentials"}

HELP = {
    "host": "address both servers bind to (ours; TF Serving binds all interfaces)",
    "max_request_bytes": "largest accepted request: REST answers 413, gRPC RESOURCE_EXHAUSTED (ours)",
    "port": "gRPC port (0 = off)", "rest_api_port": "REST port (0 = off; must differ from --port)",
    "model_name": "name of the model in single-model mode", "model_base_path": "absolute path of its versions",
    "model_config_file": "ModelServerConfig text proto (overrides --model_name/--model_base_path)",
}


class UsageError(Exception):
    """Exit with the usage text and status 255, like tensorflow_model_server."""


def usage() -> str:
    lines = ["usage: python -m server --flag=value ...", "Flags:"]
    for field in fields(Flags):
        kind = {bool: "bool", int: "int32", float: "float", str: "string"}[type(field.default)]
        lines.append(f"\t--{field.name}={str(field.default).lower() if kind == 'bool' else field.default}"
                     f"\t{kind}\t{HELP.get(field.name, '')}")
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> tuple[Flags, list[str]]:
    """(Flags, unknown arguments). Raises UsageError for --help or a value that does not parse."""
    flags = Flags()
    types = {f.name: type(f.default) for f in fields(Flags)}
    unknown = []
    for arg in argv:
        if arg in ("--help", "-h", "--helpfull"):
            raise UsageError("")
        if not arg.startswith("--"):
            unknown.append(arg)
            continue
        name, has_value, value = arg[2:].partition("=")
        kind = types.get(name)
        if kind is None:
            unknown.append(arg)
            continue
        if kind is bool:
            if not has_value or value in ("true", "1"):
                setattr(flags, name, True)
            elif value in ("false", "0"):
                setattr(flags, name, False)
            else:
                raise UsageError(f"Illegal value '{value}' for bool flag --{name}")
        elif not has_value:
            unknown.append(arg)  # `--port 8500` is not parsed by TensorFlow's flag library either
        else:
            try:
                setattr(flags, name, kind(value))
            except ValueError:
                raise UsageError(f"Illegal value '{value}' for flag --{name} of type {kind.__name__}") from None
    return flags, unknown


def print_usage_and_exit(message: str) -> None:
    if message:
        print(message)
    print(usage())
    sys.exit(255)
