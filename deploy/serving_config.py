"""What a spec's `serving:` section becomes on disk and on the command line of a model server.

The same files and flags drive TF Serving in a container and the embedded server, so both
backends serve a model exactly as configured: a model config (the spec's model and those of
serving.also_serve, each at its latest version), batching parameters when batching is on, and a
monitoring config for Prometheus.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from spec.schema import BatchingSpec, MonitoringSpec, Spec

MODEL_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MONITORING_CONFIG = "monitoring.config"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_config_text(models: Sequence[tuple[str, str]]) -> str:
    """A ModelServerConfig text proto serving the latest version of each (name, base path)."""
    entries = "".join("  config {\n"
                      f"    name: {_quote(name)}\n"
                      f"    base_path: {_quote(base_path)}\n"
                      '    model_platform: "tensorflow"\n'
                      "    model_version_policy { latest { num_versions: 1 } }\n"
                      "  }\n" for name, base_path in models)
    return "model_config_list {\n" + entries + "}\n"


def batching_text(batching: BatchingSpec) -> str:
    """A BatchingParameters text proto (each field is a wrapper message, as TF Serving expects)."""
    lines = [f"max_batch_size {{ value: {batching.max_batch_size} }}",
             f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}",
             f"max_enqueued_batches {{ value: {batching.max_enqueued_batches} }}",
             f"num_batch_threads {{ value: {batching.num_batch_threads} }}"]
    lines += [f"allowed_batch_sizes: {size}" for size in batching.allowed_batch_sizes]
    if batching.pad_variable_length_inputs:
        lines.append("pad_variable_length_inputs: true")
    return "\n".join(lines) + "\n"


def monitoring_text(monitoring: MonitoringSpec) -> str:
    """A MonitoringConfig text proto enabling (or not) Prometheus at the spec's path."""
    enabled = "true" if monitoring.enabled else "false"
    return f"prometheus_config {{\n  enable: {enabled}\n  path: {_quote(monitoring.path)}\n}}\n"


@dataclass(frozen=True)
class ServerLayout:
    """Where the server finds things: paths as the server process sees them (host or container)."""
    model_base_paths: tuple[tuple[str, str], ...]  # (name, <base>/<name> holding the version directories), served order
    config_dir: str                                 # holds MODEL_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG

    @classmethod
    def on_host(cls, spec: Spec, config_dir: Path) -> "ServerLayout":
        """Every served model where it was exported."""
        return cls(tuple((served.name, str(served.model_dir)) for served in spec.served), str(config_dir))

    @classmethod
    def in_image(cls, spec: Spec, models_root: str = "/models", config_dir: str = "/config") -> "ServerLayout":
        """Every served model under models_root/<name>, as an image lays them out."""
        return cls(tuple((served.name, f"{models_root}/{served.name}") for served in spec.served), config_dir)


def write_configs(spec: Spec, directory: Path, layout: ServerLayout) -> list[Path]:
    """Write the config files for `spec` into `directory` (created); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {MODEL_CONFIG: model_config_text(layout.model_base_paths),
             MONITORING_CONFIG: monitoring_text(spec.serving.monitoring)}
    if spec.serving.batching.enabled:
        files[BATCHING_CONFIG] = batching_text(spec.serving.batching)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def server_flags(spec: Spec, layout: ServerLayout, embedded: bool,
                 ports: Optional[tuple[int, int]] = None) -> list[str]:
    """tensorflow_model_server flags for `spec`; `embedded` adds the flags only our server has.

    `ports` (gRPC, REST) replaces the spec's, e.g. TF Serving's 8500/8501 inside a container.
    """
    serving = spec.serving
    grpc_port, rest_port = ports or (serving.grpc_port, serving.rest_port)
    flags = [f"--port={grpc_port}",
             f"--rest_api_port={rest_port}",
             f"--model_config_file={layout.config_dir}/{MODEL_CONFIG}",
             f"--monitoring_config_file={layout.config_dir}/{MONITORING_CONFIG}",
             f"--rest_api_timeout_in_ms={serving.rest_api_timeout_ms}",
             f"--enable_model_warmup={'true' if spec.export.warmup else 'false'}"]
    if serving.batching.enabled:
        flags += ["--enable_batching=true", f"--batching_parameters_file={layout.config_dir}/{BATCHING_CONFIG}"]
    if serving.intra_op_parallelism:
        flags.append(f"--tensorflow_intra_op_parallelism={serving.intra_op_parallelism}")
    if serving.inter_op_parallelism:
        flags.append(f"--tensorflow_inter_op_parallelism={serving.inter_op_parallelism}")
    if serving.rest_api_num_threads:
        flags.append(f"--rest_api_num_threads={serving.rest_api_num_threads}")
    if serving.grpc_max_threads:
        flags.append(f"--grpc_max_threads={serving.grpc_max_threads}")
    if serving.num_load_threads:
        flags.append(f"--num_load_threads={serving.num_load_threads}")
    if serving.file_system_poll_wait_seconds != 1:
        flags.append(f"--file_system_poll_wait_seconds={serving.file_system_poll_wait_seconds}")
    if embedded:
        flags += [f"--host={serving.host}", f"--max_request_bytes={serving.max_request_bytes}"]
    return flags
