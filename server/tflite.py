"""TFLite versions (`model.tflite` in a version directory, served with --prefer_tflite_model), as TF Serving
serves them: every SignatureDef of the flatbuffer becomes a predict signature with the same aliases, run through
TensorFlow's TFLite interpreter. A model without SignatureDefs gets `serving_default` over its input and output
tensors. One interpreter per version behind a lock (TF Serving pools several: --num_tflite_interpreters_per_pool
has no effect here)."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from server.errors import InvalidArgument
from server.model import LoadOptions, Signature, TensorSpec
from server.tensors.dtypes import NUMPY_DTYPES, DType, tf_dtype_of

TFLITE_FILE = "model.tflite"
PREDICT_METHOD = "tensorflow/serving/predict"


def has_tflite(path: Path) -> bool:
    return (Path(path) / TFLITE_FILE).is_file()


def _dtype(numpy_dtype) -> int:
    return DType.STRING if np.dtype(numpy_dtype).kind in "OSU" else tf_dtype_of(numpy_dtype)


def _spec(alias: str, detail: dict) -> TensorSpec:
    shape = detail.get("shape_signature", detail["shape"])  # -1 where the flatbuffer leaves a dimension open
    return TensorSpec(alias=alias, name=detail["name"], dtype=_dtype(detail["dtype"]),
                      shape=tuple(int(d) for d in shape))


def _meta_graph(signatures: dict[str, Signature]):
    """A MetaGraphDef holding the signature map, for GetModelMetadata and /metadata."""
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.meta_info_def.tags.append("serve")
    for key, signature in signatures.items():
        definition = meta.signature_def[key]
        definition.method_name = signature.method_name
        for target, specs in ((definition.inputs, signature.inputs), (definition.outputs, signature.outputs)):
            for alias, spec in specs.items():
                info = target[alias]
                info.name, info.dtype = spec.name, spec.dtype
                for size in spec.shape:
                    info.tensor_shape.dim.add(size=size)
    return meta


@dataclass
class TfLiteModel:
    """A loaded TFLite version with LoadedModel's interface (path, meta_graph, signatures, run, close)."""
    path: Path
    meta_graph: object
    signatures: dict[str, Signature]
    _interpreter: object = None
    _runners: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: str | Path, options: LoadOptions) -> "TfLiteModel":
        """Load <path>/model.tflite. Raises InvalidArgument (TF Serving's load failure) if it cannot."""
        import tensorflow as tf

        path = Path(path)
        try:
            with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice, once per load
                warnings.simplefilter("ignore")
                interpreter = tf.lite.Interpreter(model_path=str(path / TFLITE_FILE),
                                                  num_threads=options.intra_op_parallelism or None)
            listed = interpreter.get_signature_list()
        except (ValueError, RuntimeError, OSError) as exc:
            raise InvalidArgument(f"Failed to load TFLite model at {path}: {exc}") from None
        signatures, runners = {}, {}
        if listed:
            for key in sorted(listed):
                runner = interpreter.get_signature_runner(key)
                signatures[key] = Signature(
                    name=key, method_name=PREDICT_METHOD,
                    inputs={a: _spec(a, d) for a, d in sorted(runner.get_input_details().items())},
                    outputs={a: _spec(a, d) for a, d in sorted(runner.get_output_details().items())})
                runners[key] = runner
        else:  # no SignatureDefs: one signature over the graph's own input and output tensors
            interpreter.allocate_tensors()
            signatures["serving_default"] = Signature(
                name="serving_default", method_name=PREDICT_METHOD,
                inputs={d["name"]: _spec(d["name"], d) for d in interpreter.get_input_details()},
                outputs={d["name"]: _spec(d["name"], d) for d in interpreter.get_output_details()})
        return cls(path=path, meta_graph=_meta_graph(signatures), signatures=signatures,
                   _interpreter=interpreter, _runners=runners)

    def run(self, signature: Signature, inputs: dict[str, np.ndarray],
            output_aliases: Sequence[str]) -> dict[str, np.ndarray]:
        """Run `signature` with inputs keyed by alias; the named outputs keyed by alias."""
        feeds = {alias: np.asarray(value, dtype=NUMPY_DTYPES[signature.inputs[alias].dtype])
                 for alias, value in inputs.items()}
        with self._lock:
            try:
                if signature.name in self._runners:
                    results = self._runners[signature.name](**feeds)
                else:
                    results = self._run_tensors(signature, feeds)
            except (ValueError, RuntimeError) as exc:
                raise InvalidArgument(str(exc)) from None
            return {alias: np.array(results[alias]) for alias in output_aliases}

    def _run_tensors(self, signature: Signature, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter
        details = {d["name"]: d for d in interpreter.get_input_details()}
        for alias, value in feeds.items():
            index = details[alias]["index"]
            if tuple(details[alias]["shape"]) != value.shape:
                interpreter.resize_tensor_input(index, value.shape)
        interpreter.allocate_tensors()
        for alias, value in feeds.items():
            interpreter.set_tensor(details[alias]["index"], value)
        interpreter.invoke()
        return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}

    def close(self) -> None:
        self._interpreter, self._runners = None, {}
