"""The protocol-independent data plane: predict, classify, regress, multi-inference, metadata, status.

REST and gRPC front ends translate their requests into these calls and the results back; they share
one DataPlane instance. Semantics and messages follow TF Serving (predict_util.cc, classifier.cc,
regressor.cc, multi_inference.cc, get_model_metadata_impl.cc, get_model_status_impl.cc).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from server.errors import DataLoss, FailedPrecondition, InvalidArgument, ServingError, Unimplemented
from server.metrics import Metrics
from server.model import LoadedModel, Signature
from server.repository import Repository, VersionState
from server.tensors.proto import proto_to_array

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


class SignatureNotFound(FailedPrecondition):
    """Predict on an unknown signature (gRPC: FAILED_PRECONDITION; REST reports it as INVALID_ARGUMENT)."""

    def __init__(self, signature_name: str):
        super().__init__(f'Serving signature key "{signature_name}" not found.')
        self.signature_name = signature_name


@dataclass(frozen=True)
class Target:
    """Which servable a request addresses (TF Serving's ModelSpec)."""
    name: str
    version: Optional[int] = None
    label: Optional[str] = None
    signature_name: str = ""

    @property
    def signature(self) -> str:
        return self.signature_name or DEFAULT_SIGNATURE


@dataclass(frozen=True)
class Resolved:
    """The response's model_spec: request name, resolved version, signature defaulted."""
    name: str
    version: int
    signature_name: str


Runner = Callable[[LoadedModel, Signature, dict, Sequence[str]], dict]


def direct_runner(model: LoadedModel, signature: Signature, inputs: dict, outputs: Sequence[str]) -> dict:
    return model.run(signature, inputs, outputs)


class DataPlane:
    def __init__(self, repository: Repository, runner: Runner = direct_runner, metrics: Optional[Metrics] = None):
        self.repository = repository
        self._runner = runner
        self.metrics = metrics if metrics is not None else Metrics()

    def _run(self, model_name: str, api: str, model: LoadedModel, signature: Signature, inputs: dict,
             outputs: Sequence[str]) -> dict:
        """Run the model; a request's run is recorded as runtime_latency (api is "" for warmup replays)."""
        started = time.perf_counter()
        result = self._runner(model, signature, inputs, outputs)
        if api:
            self.metrics.record_runtime(model_name, api, (time.perf_counter() - started) * 1e6)
        return result

    # ----------------------------------------------------------------------------- predict

    def predict(self, target: Target, decode_inputs: Callable[[Signature], dict[str, np.ndarray]],
                output_filter: Sequence[str] = ()) -> tuple[Resolved, dict[str, np.ndarray]]:
        """Resolve the servable, decode the inputs against its signature (so errors come in TF Serving's
        order: lookup first, then conversion), validate, run. Returns outputs keyed by alias, sorted."""
        if not target.name:
            raise InvalidArgument("ModelSpec has no name specified.")
        with self.repository.acquire(target.name, target.version, target.label) as (version, model):
            signature = model.signatures.get(target.signature)
            if signature is None:
                raise SignatureNotFound(target.signature)
            inputs = decode_inputs(signature)
            _check_inputs(signature, inputs)
            aliases = _output_aliases(signature, output_filter)
            outputs = self._run(target.name, "Predict", model, signature, inputs, aliases)
        return Resolved(target.name, version, target.signature), outputs

    # ----------------------------------------------------------------------- classify/regress

    def classify(self, target: Target, examples: Sequence[bytes]) -> tuple[Resolved, list[list[tuple[str, float]]]]:
        """Run a classify signature on serialized tf.Examples; one [(label, score), ...] per example."""
        with self.repository.acquire(target.name, target.version, target.label) as (version, model):
            signature = _inference_signature(model, target.signature)
            outputs = self._classify(model, signature, examples, (target.name, "Classify"))
        self.metrics.record_examples(target.name, len(examples))
        return Resolved(target.name, version, target.signature), outputs

    def regress(self, target: Target, examples: Sequence[bytes]) -> tuple[Resolved, list[float]]:
        """Run a regress signature on serialized tf.Examples; one value per example."""
        with self.repository.acquire(target.name, target.version, target.label) as (version, model):
            signature = _inference_signature(model, target.signature)
            outputs = self._regress(model, signature, examples, (target.name, "Regress"))
        self.metrics.record_examples(target.name, len(examples))
        return Resolved(target.name, version, target.signature), outputs

    def multi_inference(self, tasks: Sequence[tuple[Target, str]], examples: Sequence[bytes]) -> list:
        """Several classify/regress signatures of one model on the same examples, in task order.
        As in TF Serving, the version of the first task's spec is used for all (tensorflow/serving#1254)."""
        if not tasks:
            raise InvalidArgument("Expected at least one task")
        name = tasks[0][0].name
        seen = set()
        for target, method in tasks:
            if not target.name:
                raise InvalidArgument("Found ModelSpec with an empty model name.")
            if target.name != name:
                raise InvalidArgument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            if target.signature in seen:
                raise InvalidArgument(f"Duplicate evaluation of signature: {target.signature}")
            seen.add(target.signature)
            if method not in (CLASSIFY, REGRESS):
                raise Unimplemented(f"Unsupported signature method_name: {method}")
        first = tasks[0][0]
        results = []
        with self.repository.acquire(name, first.version, first.label) as (version, model):
            for target, method in tasks:
                signature = _inference_signature(model, target.signature)
                run = self._classify if method == CLASSIFY else self._regress
                results.append((Resolved(name, version, target.signature), method, run(model, signature, examples)))
        self.metrics.record_examples(name, len(examples))
        return results

    def _run_examples(self, model: LoadedModel, signature: Signature, examples: Sequence[bytes],
                      outputs: Sequence[str], request: tuple[str, str]) -> dict:
        if not examples:
            raise InvalidArgument("Input is empty.")
        serialized = np.empty(len(examples), dtype=object)
        serialized[:] = list(examples)
        return self._run(*request, model, signature, {"inputs": serialized}, outputs)

    # request: (model name, API) for runtime_latency; TF Serving records none for MultiInference or warmup.
    def _classify(self, model, signature: Signature, examples: Sequence[bytes],
                  request: tuple[str, str] = ("", "")) -> list[list[tuple[str, float]]]:
        if list(signature.inputs) != ["inputs"]:
            raise InvalidArgument(f"No classification inputs found in SignatureDef: {signature.name}")
        wanted = [a for a in ("classes", "scores") if a in signature.outputs]
        if not wanted:
            raise InvalidArgument("Expected classification signature outputs to contain at least one of: "
                                  f"classes, scores (signature {signature.name})")
        out = self._run_examples(model, signature, examples, wanted, request)
        classes, scores = out.get("classes"), out.get("scores")
        for alias, array in out.items():
            if array.ndim != 2 or array.shape[0] != len(examples):
                raise InvalidArgument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                      f"{list(array.shape)} for output {alias}")
        count = (scores if scores is not None else classes).shape[1]
        results = []
        for row in range(len(examples)):
            results.append([((classes[row, k].decode("utf-8", "replace") if classes is not None else ""),
                             (float(scores[row, k]) if scores is not None else 0.0)) for k in range(count)])
        return results

    def _regress(self, model, signature: Signature, examples: Sequence[bytes],
                 request: tuple[str, str] = ("", "")) -> list[float]:
        if list(signature.inputs) != ["inputs"]:
            raise InvalidArgument(f"No regression inputs found in SignatureDef: {signature.name}")
        if "outputs" not in signature.outputs:
            raise InvalidArgument(f"No regression outputs found in SignatureDef: {signature.name}")
        values = self._run_examples(model, signature, examples, ["outputs"], request)["outputs"]
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or values.shape[0] != len(examples):
            raise InvalidArgument(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                                  f"but got {list(values.shape)}")
        return [float(v) for v in values]

    # ------------------------------------------------------------------- metadata and status

    def metadata(self, target: Target, fields: Sequence[str] = ("signature_def",)):
        """(Resolved, MetaGraphDef signature_def map) for GetModelMetadata."""
        if not target.name:
            raise InvalidArgument("ModelSpec has no name specified.")
        if not fields:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for name in fields:
            if name != "signature_def":
                raise InvalidArgument(f"Metadata field {name} is not supported")
        with self.repository.acquire(target.name, target.version, target.label) as (version, model):
            signature_defs = model.meta_graph.signature_def
        return Resolved(target.name, version, ""), signature_defs

    def status(self, name: str, version: Optional[int] = None) -> list[VersionState]:
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.repository.status(name, version)

    # ------------------------------------------------------------------------------ warmup

    def warmup(self, name: str, version: int, model: LoadedModel, iterations: int = 1) -> int:
        """Replay assets.extra/tf_serving_warmup_requests against a freshly loaded version. Returns records read."""
        path = Path(model.path) / WARMUP_FILE
        if not path.is_file():
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        started = time.perf_counter()
        try:
            records = _read_tfrecords(path)
        except ServingError as error:  # as in TF Serving, a failed read is recorded with its status
            self.metrics.record_warmup(str(model.path), f"{error.code.name}: {error.message}",
                                       (time.perf_counter() - started) * 1e6)
            raise
        if len(records) > MAX_WARMUP_RECORDS:
            raise InvalidArgument(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        for record in records:
            log = prediction_log_pb2.PredictionLog.FromString(record)
            kind = log.WhichOneof("log_type")
            for _ in range(max(1, iterations)):
                if kind == "predict_log":
                    request = log.predict_log.request
                    signature = model.signatures.get(request.model_spec.signature_name or DEFAULT_SIGNATURE)
                    if signature is None:
                        raise SignatureNotFound(request.model_spec.signature_name or DEFAULT_SIGNATURE)
                    inputs = {k: proto_to_array(v) for k, v in request.inputs.items()}
                    _check_inputs(signature, inputs)
                    self._runner(model, signature, inputs, _output_aliases(signature, request.output_filter))
                elif kind in ("classify_log", "regress_log"):
                    request = getattr(log, kind).request
                    signature = _inference_signature(model, request.model_spec.signature_name or DEFAULT_SIGNATURE)
                    examples = examples_from_input(request.input)
                    (self._classify if kind == "classify_log" else self._regress)(model, signature, examples)
                else:
                    raise Unimplemented(f"Unsupported log_type for warmup: {kind}")
        self.metrics.record_warmup(str(model.path), "OK", (time.perf_counter() - started) * 1e6)
        return len(records)


def _read_tfrecords(path: Path) -> list[bytes]:
    import tensorflow as tf

    try:
        return list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    except tf.errors.OpError as exc:
        raise DataLoss(f"Error reading warmup data at {path}: {exc.message}. Please verify your warmup data is "
                       "in TFRecord format.") from None


def examples_from_input(message) -> list[bytes]:
    """tensorflow.serving.Input -> serialized tf.Examples (context merged into each, as TF Serving does)."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in message.example_list.examples]
    if kind == "example_list_with_context":
        context = message.example_list_with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in message.example_list_with_context.examples]
    raise InvalidArgument("Input is empty.")


def _inference_signature(model: LoadedModel, name: str) -> Signature:
    signature = model.signatures.get(name)
    if signature is None:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    return signature


def _check_inputs(signature: Signature, inputs: dict) -> None:
    expected, sent = set(signature.inputs), set(inputs)
    if expected == sent:
        return
    extra = ",".join(sorted(sent - expected))
    missing = ",".join(sorted(expected - sent))
    if len(sent) != len(expected):
        raise InvalidArgument(f"input size does not match signature: {len(sent)}!={len(expected)} "
                              f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                              f"Sent extra: {{{extra}}}. Missing but required: {{{missing}}}.")
    alias = sorted(expected - sent)[0]
    raise InvalidArgument(f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in "
                          f"request and no default value provided. Sent extra: {{{extra}}}. "
                          f"Missing but required: {{{missing}}}.")


def _output_aliases(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                  f"the set {{{','.join(signature.outputs)}}}.")
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)
