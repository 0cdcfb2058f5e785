"""The one spec schema for the harness: model, export, serving, benchmark (its models in benchmarkschema.py).

Every part of the harness loads a spec through `spec.loader.load_spec` and gets a frozen, validated `Spec`.
Unknown keys, wrong types, missing files and impossible values are rejected with one line per
problem naming `file:line`, the key path and what is allowed. Defaults live here and nowhere else.
Relative paths in a spec are relative to the spec file's directory (like docker compose).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from spec.benchmarkschema import BenchmarkSpec
from spec.contract import (
    CLASSIFY_SIGNATURE,
    IMAGE_SIGNATURE,
    SIGNATURE_KINDS,
    TENSOR_SIGNATURE,
)
from spec.lifecycle import LifecycleSpec, LoadThreads, PollSeconds
from spec.tuning import TuneSpec
from spec.yamlsource import YamlDocument

SOURCE_KINDS = ("keras_application", "keras_file", "saved_model", "builder")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- model

class KerasApplicationSource(_Strict):
    kind: Literal["keras_application"]
    application: str = Field(description="Name in keras.applications, e.g. MobileNetV2, ResNet50")
    weights: Optional[str] = Field(
        None, description="'imagenet' (needs the internet) or null for random weights with the same latency")
    classes: int = Field(1000, gt=1, description="Number of classes when weights is null")
    calibrate: bool = Field(True, description="weights null: seed the weights, then set every BatchNormalization's "
                            "statistics and the classifier's scale from the bundled photos, so the answers depend on "
                            "the image (the same graph and latency); false keeps the raw random initialisation")

    @field_validator("application")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"'{value}' is not a keras.applications name such as MobileNetV2")
        return value


class KerasFileSource(_Strict):
    kind: Literal["keras_file"]
    path: Path = Field(description="A .keras or .h5 file")


class SavedModelSource(_Strict):
    kind: Literal["saved_model"]
    path: Path = Field(description="An existing SavedModel directory (the one holding saved_model.pb)")
    mode: Literal["as_is", "add_signatures"] = Field(
        "as_is", description="as_is: served unchanged; add_signatures: wrap `signature` with image signatures")
    signature: str = Field(IMAGE_SIGNATURE, description="The signature to wrap in add_signatures mode")


class BuilderSource(_Strict):
    kind: Literal["builder"]
    function: str = Field(description="'package.module:function' returning a Keras model")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the function")

    @field_validator("function")
    @classmethod
    def _module_function(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"'{value}' must look like 'package.module:function'")
        return value


class FrozenGraphSource(_Strict):
    kind: Literal["frozen_graph"]
    path: Path = Field(description="A frozen GraphDef (.pb, binary), as TF1 tutorials write with freeze_graph")
    input: str = Field(description="The float image input tensor, e.g. 'input:0' (N x H x W x C, preprocessed)")
    output: str = Field(description="The class-score output tensor, e.g. 'MobilenetV1/Predictions/Reshape_1:0'")

    @field_validator("input", "output")
    @classmethod
    def _tensor_name(cls, value: str) -> str:
        if not re.fullmatch(r"[^:\s]+(:\d+)?", value):
            raise ValueError(f"'{value}' is not a tensor name such as 'input:0'")
        return value if ":" in value else value + ":0"


Source = Annotated[
    Union[KerasApplicationSource, KerasFileSource, SavedModelSource, BuilderSource, FrozenGraphSource],
    Field(discriminator="kind"),
]


class Preprocessing(_Strict):
    mode: Literal["unit", "symmetric", "mean_std", "none"] = Field(
        "symmetric", description="unit: x/255; symmetric: x/127.5-1; mean_std: (x/255-mean)/std; none: raw 0..255")
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    @model_validator(mode="after")
    def _mean_std(self) -> "Preprocessing":
        if self.mode == "mean_std":
            if self.mean is None or self.std is None:
                raise ValueError("mode mean_std needs both 'mean' and 'std' (one value per channel)")
            if any(s <= 0 for s in self.std):
                raise ValueError("every 'std' value must be > 0")
        elif self.mean is not None or self.std is not None:
            raise ValueError(f"'mean' and 'std' are only used with mode mean_std, not {self.mode}")
        return self


class InputSpec(_Strict):
    height: int = Field(224, ge=8, le=4096)
    width: int = Field(224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    resize_method: Literal["bilinear", "nearest", "bicubic", "area"] = "bilinear"
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)


class ModelSpec(_Strict):
    source: Source
    input: InputSpec = Field(default_factory=InputSpec)
    outputs: Literal["probabilities", "logits", "sigmoid"] = Field(
        "probabilities", description="What the model returns; logits get a softmax in the exported graph; sigmoid: "
        "one unit, the probability p of the second label, exported as two classes [1 - p, p]")
    labels: Union[Path, list[str], None] = Field(
        None, description="A text file with one label per line, or an inline list; null uses class indices")


# -------------------------------------------------------------------------------------- export

class VerifySpec(_Strict):
    enabled: bool = True
    images: int = Field(4, ge=1, le=64, description="How many real images to compare")
    tolerance: float = Field(1e-4, gt=0, description="Max absolute difference allowed")


class ExportSpec(_Strict):
    base_path: Path = Field(Path("../models"), description="Models go to <base_path>/<name>/<version>/")
    version: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = Field(
        "auto", description="A positive integer, or auto (one more than the highest present)")
    overwrite: bool = Field(False, description="Replace an existing version directory")
    signatures: tuple[Literal[IMAGE_SIGNATURE, TENSOR_SIGNATURE, CLASSIFY_SIGNATURE], ...] = SIGNATURE_KINDS
    top_k: int = Field(5, ge=1, description="Classes returned by the classify signature")
    warmup: bool = Field(True, description="Write assets.extra/tf_serving_warmup_requests")
    verify: VerifySpec = Field(default_factory=VerifySpec)

    @field_validator("signatures")
    @classmethod
    def _non_empty_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"at least one signature is needed; allowed: {', '.join(SIGNATURE_KINDS)}")
        if len(set(value)) != len(value):
            raise ValueError("signatures are listed more than once")
        return value


# ------------------------------------------------------------------------------------- serving

Port = Annotated[int, Field(ge=1, le=65535)]


class BatchingSpec(_Strict):
    enabled: bool = False
    max_batch_size: int = Field(32, ge=1)
    batch_timeout_micros: int = Field(2000, ge=0)
    num_batch_threads: int = Field(2, ge=1)
    max_enqueued_batches: int = Field(64, ge=1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = Field(False, description="TF Serving pads inputs of different lengths to "
                                             "batch them; the embedded server batches them in separate queues "
                                             "instead, so there it has no effect (its log says so)")

    @model_validator(mode="after")
    def _allowed_sizes(self) -> "BatchingSpec":
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                                 f"max_batch_size ({self.max_batch_size})")
        return self


class MonitoringSpec(_Strict):
    enabled: bool = True
    path: str = "/monitoring/prometheus/metrics"

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class KubernetesSpec(_Strict):
    replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1, description="HorizontalPodAutoscaler upper bound")
    target_cpu_percent: int = Field(70, ge=1, le=100, description="HPA target average CPU utilisation")
    cpu: str = Field("2", description="CPU request (and limit) per pod")
    memory: str = Field("4Gi", description="memory request (and limit) per pod")
    image: Optional[str] = Field(None, description="image reference in your registry; default: the local tag")


class ServingSpec(_Strict):
    backend: Literal["embedded", "docker"] = "embedded"
    image: Literal["cpu", "gpu", "cpu-optimized", "embedded"] = Field(
        "cpu", description="docker backend: TF Serving CPU or GPU image, a CPU build for serving.cpu_flags, or ours")
    network: Literal["published", "host"] = Field(
        "published", description="docker backend: publish 8500/8501 on serving.host, or share the host's network")
    cpu_flags: tuple[Literal["avx", "avx2", "fma", "sse4.1", "sse4.2", "avx512f", "native"], ...] = Field(
        ("avx2", "fma"), description="image cpu-optimized: instruction sets the TF Serving binary is compiled for")
    base_image: Optional[str] = Field(
        None, description="images cpu, gpu, cpu-optimized: the TF Serving image to build on (default "
        "tensorflow/serving:<version>, -gpu for gpu); the report records its id and whether it is TF Serving")
    python_base_image: str = Field(
        "python:3.11-slim-bookworm", description="image embedded: the Python base image (Debian, Python 3.10-3.12)")
    kubernetes: "KubernetesSpec" = Field(default_factory=lambda: KubernetesSpec())
    host: str = Field("127.0.0.1", description="Address servers and published ports bind to")
    grpc_port: Port = 8500
    rest_port: Port = 8501
    tf_serving_version: Optional[str] = Field(None, description="Defaults to the exporting TensorFlow's version")
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    intra_op_parallelism: int = Field(0, ge=0, description="0 lets TensorFlow decide")
    inter_op_parallelism: int = Field(0, ge=0, description="0 lets TensorFlow decide")
    rest_api_num_threads: int = Field(0, ge=0, description="HTTP worker threads (--rest_api_num_threads); 0 keeps "
                                      "the server's default, 4 x CPUs")
    grpc_max_threads: int = Field(0, ge=0, description="gRPC threads (--grpc_max_threads); 0 keeps the server's "
                                  "default, 4 x CPUs")
    num_load_threads: LoadThreads = Field(0, description="Threads loading models (--num_load_threads); 0 loads "
                                          "them one after another, N loads up to N at once")
    file_system_poll_wait_seconds: PollSeconds = Field(1, description="How often the server looks for new versions "
                                                       "under each base path (--file_system_poll_wait_seconds)")
    tuned: Optional[str] = Field(None, description="'latest' (or a tune directory or tune.json): serve the "
                                 "configuration make tune recommended; it replaces batching, the thread counts "
                                 "and, on the docker backend, the image")
    rest_api_timeout_ms: int = Field(30000, ge=1)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Larger requests get 413 / RESOURCE_EXHAUSTED")
    readiness_timeout_s: float = Field(180.0, gt=0)
    also_serve: tuple[Path, ...] = Field(
        (), description="Other spec files (relative to this one) whose models the same server also serves, each an "
        "entry of one model config file; only their model and export sections are used")

    @model_validator(mode="after")
    def _distinct_ports(self) -> "ServingSpec":
        if self.grpc_port == self.rest_port:
            raise ValueError(f"grpc_port and rest_port must differ (both are {self.grpc_port})")
        return self


# ------------------------------------------------------- benchmark: spec/benchmarkschema.py


# ------------------------------------------------------------------------------------ the spec



class Spec(_Strict):
    name: str = Field(description="Model name, as clients address it (/v1/models/<name>)")
    model: ModelSpec
    export: ExportSpec = Field(default_factory=ExportSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)

    _origin: Optional[Path] = PrivateAttr(None)
    _lines: dict = PrivateAttr(default_factory=dict)
    _sha256: str = PrivateAttr("")
    _companions: tuple = PrivateAttr(())
    _tuned_from: Optional[Path] = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter or digit")
        return value

    @property
    def origin(self) -> Optional[Path]:
        return self._origin

    @property
    def tuned_from(self) -> Optional[Path]:
        """The tune.json whose recommendation serving.tuned applied (None: the serving section as written)."""
        return self._tuned_from

    @property
    def sha256(self) -> str:
        """sha256 of the spec file's bytes (empty for specs built in code)."""
        return self._sha256

    def where(self, *key_path: Any) -> str:
        """'file:line' of a key, for error messages about values that are only checked later."""
        if self._origin is None:
            return "<spec>"
        doc = YamlDocument(self._origin, None, self._lines)
        return f"{self._origin}:{doc.line_of(tuple(key_path))}"

    def resolve(self, path: Path) -> Path:
        """A path from the spec, made absolute against the spec file's directory."""
        path = Path(path).expanduser()
        if path.is_absolute() or self._origin is None:
            return path.resolve()
        return (self._origin.parent / path).resolve()

    @property
    def model_dir(self) -> Path:
        """<base_path>/<name>: the directory holding the numeric version directories."""
        return self.resolve(self.export.base_path) / self.name

    @property
    def served(self) -> tuple["Spec", ...]:
        """Every model the spec's server serves: this one first, then serving.also_serve's (loaded specs)."""
        return (self, *self._companions)
