"""One SavedModel version loaded into a TF1 session, as tensorflow_model_server does.

A session over the MetaGraphDef serves TF1-era and TF2 SavedModels alike, addressed by the
signature's tensor names. Signatures run through session callables: inputs are handed to the C++
runtime without Python's static shape checks (TF Serving does not check shapes either), and the
call overhead is tens of microseconds. Session runs release the GIL, so concurrent requests run
concurrently.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from server.errors import InvalidArgument, error_for_code

# TF DataType enum values used by the codec and metadata (tensorflow/core/framework/types.proto).


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: its alias, graph tensor name, TF dtype enum and shape."""
    alias: str
    name: str
    dtype: int
    shape: Optional[tuple[int, ...]]  # None = unknown rank; -1 = unknown dim


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpec]   # sorted by alias
    outputs: dict[str, TensorSpec]  # sorted by alias


@dataclass
class LoadOptions:
    tags: tuple[str, ...] = ("serve",)
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    timeout_ms: int = 0  # 0 = no session-run timeout
    prefer_tflite: bool = False  # --prefer_tflite_model: serve <version>/model.tflite when there is one


def _spec(alias: str, info) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(alias=alias, name=info.name, dtype=int(info.dtype), shape=shape)


def signatures_of(meta_graph) -> dict[str, Signature]:
    """The signature map of a MetaGraphDef, with inputs/outputs sorted by alias (TF Serving's order)."""
    result = {}
    for key, sig in meta_graph.signature_def.items():
        result[key] = Signature(
            name=key, method_name=sig.method_name,
            inputs={a: _spec(a, sig.inputs[a]) for a in sorted(sig.inputs)},
            outputs={a: _spec(a, sig.outputs[a]) for a in sorted(sig.outputs)},
        )
    return result


MIN_GUARDED_RANK = 3  # image-like inputs (convolutions, pooling): where oneDNN kernels abort on a wrong rank


def _check_shape(alias: str, spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """Refuse a tensor whose rank differs from an image-like input's (rank 3 or more). TF Serving hands any shape
    to the kernels, and so does this server otherwise ([3] for half_plus_two's [-1, 1] works in both); but
    TensorFlow's oneDNN kernels (its default on x86) CHECK-fail and abort the whole process on, for example, a
    rank-3 tensor fed to a convolution, where the stock kernel returns INVALID_ARGUMENT."""
    if spec.shape is None or len(spec.shape) < MIN_GUARDED_RANK or len(shape) == len(spec.shape):
        return
    wanted = "[" + ",".join(str(d) for d in spec.shape) + "]"
    raise InvalidArgument(f"input {alias}: a tensor of rank {len(shape)} ([{','.join(str(d) for d in shape)}]) for "
                          f"an input of rank {len(spec.shape)} {wanted} (tensor {spec.name})")


# Op libraries TF Serving's binary links beside TensorFlow's own: a SavedModel whose graph uses their ops loads
# there. Ours registers them by importing the Python package, once, and only when a graph needs an op that is not
# registered yet (TF Text's import costs a second and some memory); without the package, loading fails as in a
# binary without them: "Op type not registered ...".
OP_LIBRARIES = ("tensorflow_text",)


def _unregistered_ops(meta_graph) -> set[str]:
    from tensorflow.python.framework import op_def_registry

    graph = meta_graph.graph_def
    used = {node.op for node in graph.node}
    used |= {node.op for function in graph.library.function for node in function.node_def}
    defined = {function.signature.name for function in graph.library.function}
    return {op for op in used - defined if op_def_registry.get(op) is None}


def register_ops_for(meta_graph) -> set[str]:
    """Import the op libraries a graph needs (see OP_LIBRARIES); returns the ops still not registered."""
    import importlib

    missing = _unregistered_ops(meta_graph)
    for library in OP_LIBRARIES:
        if not missing:
            break
        try:
            importlib.import_module(library)
        except ImportError:
            continue
        missing = _unregistered_ops(meta_graph)
    return missing


@dataclass
class LoadedModel:
    """A loaded version. `run` is thread-safe."""
    path: Path
    meta_graph: object
    signatures: dict[str, Signature]
    _session: object = None
    _options: LoadOptions = field(default_factory=LoadOptions)
    _callables: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: str | Path, options: Optional[LoadOptions] = None) -> "LoadedModel":
        """Load the SavedModel at `path` into a fresh graph and session. Raises ServingError on failure."""
        import tensorflow as tf  # deferred: seconds to import

        options = options or LoadOptions()
        path = Path(path)
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=options.intra_op_parallelism,
            inter_op_parallelism_threads=options.inter_op_parallelism,
            allow_soft_placement=True,
        )
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            with graph.as_default():
                # SavedModelLoader is what tf.compat.v1.saved_model.loader.load wraps, minus its deprecation log
                from tensorflow.python.saved_model import loader_impl
                loader = loader_impl.SavedModelLoader(str(path))
                register_ops_for(loader.get_meta_graph_def_from_tags(list(options.tags)))
                meta_graph = loader.load(session, list(options.tags))
        except tf.errors.OpError as exc:
            session.close()
            raise error_for_code(exc.error_code, f"Failed to load SavedModel at {path}: {exc.message}") from None
        except (RuntimeError, ValueError, OSError, IOError) as exc:
            session.close()
            raise InvalidArgument(f"Failed to load SavedModel at {path}: {exc}") from None
        return cls(path=path, meta_graph=meta_graph, signatures=signatures_of(meta_graph),
                   _session=session, _options=options)

    def _callable(self, feed_names: tuple[str, ...], fetch_names: tuple[str, ...]):
        key = (feed_names, fetch_names)
        found = self._callables.get(key)
        if found is not None:
            return found
        from tensorflow.core.protobuf import config_pb2

        with self._lock:
            found = self._callables.get(key)
            if found is None:
                options = config_pb2.CallableOptions(feed=list(feed_names), fetch=list(fetch_names))
                if self._options.timeout_ms > 0:
                    options.run_options.timeout_in_ms = self._options.timeout_ms
                found = self._session._make_callable_from_options(options)
                self._callables[key] = found
        return found

    def run_tensors(self, feeds: dict[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        """Run the graph feeding tensor names -> arrays and fetching tensor names."""
        import tensorflow as tf

        feed_names = tuple(sorted(feeds))
        runner = self._callable(feed_names, tuple(fetches))
        try:
            return runner(*[feeds[name] for name in feed_names])
        except tf.errors.OpError as exc:
            raise error_for_code(exc.error_code, exc.message) from None
        except (TypeError, ValueError) as exc:  # e.g. an array the runtime cannot convert
            raise InvalidArgument(str(exc)) from None

    def run(self, signature: Signature, inputs: dict[str, np.ndarray],
            output_aliases: Sequence[str]) -> dict[str, np.ndarray]:
        """Run `signature` with inputs keyed by alias, returning the named outputs keyed by alias.

        An image-like input (rank 3 or more) of another rank is refused first (see _check_shape): some kernels
        would abort the process on it instead of returning an error."""
        for alias, value in inputs.items():
            _check_shape(alias, signature.inputs[alias], np.shape(value))
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        fetch_names = [signature.outputs[alias].name for alias in output_aliases]
        values = self.run_tensors(feeds, fetch_names)
        return dict(zip(output_aliases, values))

    def close(self) -> None:
        """Release the session (the version is unloaded)."""
        if self._session is not None:
            self._session.close()
            self._session = None



