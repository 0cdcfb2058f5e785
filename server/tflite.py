"""TFLite versions (`model.tflite` in a version directory, served with --prefer_tflite_model), as TF Serving
serves them, run through TensorFlow's TFLite interpreter. The signatures come, in this order, from:

1. the flatbuffer's `signature_defs_metadata` entry: a FlexBuffer map of signature key -> serialized SignatureDef,
   which TF Serving's TFLite session reads (tflite::GetSignatureDefMap). Each SignatureDef keeps its key, method
   name, aliases, dtypes and shapes; a tensor name that is not one of the graph's inputs or outputs is tried without
   its ':N' suffix (early converters stripped it), and a name that still matches nothing fails the load;
2. the flatbuffer's own SignatureDefs (what TFLiteConverter writes), served through signature runners;
3. neither: `serving_default` over the graph's input and output tensors, by name.

One interpreter per version behind a lock (TF Serving pools several: --num_tflite_interpreters_per_pool has no
effect here)."""
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
SIGNATURE_METADATA = "signature_defs_metadata"  # TF Lite's kSignatureDefsMetadataName


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
                if spec.shape is None:
                    info.tensor_shape.unknown_rank = True
                for size in spec.shape or ():
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
        stored = metadata_signature_defs((path / TFLITE_FILE).read_bytes(), path)
        if stored:
            interpreter.allocate_tensors()
            signatures = _from_metadata(stored, interpreter, path)
        elif listed:
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
        """Run the graph's own tensors: each alias's tensor by its name in the signature (the alias itself when the
        signature was made from the tensors)."""
        interpreter = self._interpreter
        details = {d["name"]: d for d in interpreter.get_input_details()}
        for alias, value in feeds.items():
            detail = details[signature.inputs[alias].name]
            if tuple(detail["shape"]) != value.shape:
                interpreter.resize_tensor_input(detail["index"], value.shape)
        interpreter.allocate_tensors()
        for alias, value in feeds.items():
            interpreter.set_tensor(details[signature.inputs[alias].name]["index"], value)
        interpreter.invoke()
        produced = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        return {alias: interpreter.get_tensor(produced[spec.name]) for alias, spec in signature.outputs.items()}

    def close(self) -> None:
        self._interpreter, self._runners = None, {}


def metadata_signature_defs(model: bytes, path: Path) -> dict[str, bytes]:
    """The serialized SignatureDefs a flatbuffer keeps in its `signature_defs_metadata` entry, by key ({} if none).

    Raises InvalidArgument, as TF Serving's "Invalid SignatureDefs found in TfLite model", when the entry exists
    but cannot be read."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        root = schema.Model.GetRootAs(model, 0)
        entries = [root.Metadata(i) for i in range(root.MetadataLength())]
        entry = next((e for e in entries if e.Name() == SIGNATURE_METADATA.encode()), None)
        if entry is None:
            return {}
        if entry.Buffer() >= root.BuffersLength():
            raise ValueError("Invalid buffer index in metadata")
        data = root.Buffers(entry.Buffer()).DataAsNumpy()
        if not isinstance(data, np.ndarray) or not data.size:
            raise ValueError("the metadata buffer is empty")
        stored = flexbuffers.GetRoot(data.tobytes()).AsMap
        return {key.AsKey: value.AsStringBytes for key, value in zip(stored.Keys, stored.Values)}
    except (ValueError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Failed to load TFLite model at {path}: Invalid SignatureDefs found in TfLite "
                              f"model: {exc}") from None


def _from_metadata(stored: dict[str, bytes], interpreter, path: Path) -> dict[str, Signature]:
    """Signatures from serialized SignatureDefs, their tensor names fixed to the graph's (exact, else without the
    ':N' suffix), as TF Serving's TFLite session does."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2

    graph = {"input": {d["name"] for d in interpreter.get_input_details()},
             "output": {d["name"] for d in interpreter.get_output_details()}}
    signatures = {}
    for key in sorted(stored):
        try:
            definition = meta_graph_pb2.SignatureDef.FromString(stored[key])
        except DecodeError as exc:
            raise InvalidArgument(f"Failed to load TFLite model at {path}: Invalid SignatureDefs found in TfLite "
                                  f"model: {key}: {exc}") from None
        sides = {}
        for side, infos in (("input", definition.inputs), ("output", definition.outputs)):
            specs = {}
            for alias in sorted(infos):
                info, name = infos[alias], infos[alias].name
                if name not in graph[side]:
                    legacy = name.split(":", 1)[0]
                    if legacy not in graph[side]:
                        raise InvalidArgument(f"Failed to load TFLite model at {path}: Signature {side} {alias} "
                                              f"references an unknown tensor: Unknown tensor '{name}'.")
                    name = legacy
                shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
                specs[alias] = TensorSpec(alias=alias, name=name, dtype=int(info.dtype), shape=shape)
            sides[side] = specs
        signatures[key] = Signature(name=key, method_name=definition.method_name or PREDICT_METHOD,
                                    inputs=sides["input"], outputs=sides["output"])
    return signatures
