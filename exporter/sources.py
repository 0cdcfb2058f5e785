"""Turn a spec's model source into something callable on preprocessed images.

A `SourceModel` wraps what the exporter needs from any source: a trackable object to save, a
function images -> outputs, and where it came from. Keras applications, .keras/.h5 files and
Python builders give Keras models; an existing SavedModel gives its loaded signature.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from exporter.calibrate import calibrate, photo_batch
from spec.errors import HarnessError
from spec.schema import (BuilderSource, FrozenGraphSource, KerasApplicationSource, KerasFileSource, SavedModelSource,
                         Spec)


class SourceError(HarnessError):
    """The model source cannot be loaded; the message is one line naming the spec key and a fix."""


@dataclass
class SourceModel:
    trackable: Any                  # saved with the serving module so variables come along
    call: Callable[[Any], Any]      # preprocessed float32 (N,H,W,C) -> outputs (N, classes)
    description: str


def _keras_application(spec: Spec, source: KerasApplicationSource) -> SourceModel:
    import keras

    builder = getattr(keras.applications, source.application, None)
    if builder is None or not callable(builder):
        names = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise SourceError(f"{spec.where('model', 'source', 'application')}: model.source.application: "
                          f"'{source.application}' is not in keras.applications; choose one of {', '.join(names)}")

    shape = (spec.model.input.height, spec.model.input.width, spec.model.input.channels)
    kwargs: dict[str, Any] = {"weights": source.weights, "input_shape": shape}
    if source.weights is None:
        kwargs["classes"] = source.classes
    if source.weights is None:
        keras.utils.set_random_seed(0)  # the same random network on every export
    try:
        model = builder(**kwargs)
    except Exception as exc:  # keras raises plain Exception subclasses for downloads and shapes
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if source.weights and any(w in text.lower() for w in ("url", "fetch", "download", "connection", "resolve")):
            raise SourceError(f"{spec.where('model', 'source', 'weights')}: downloading '{source.weights}' weights for "
                              f"{source.application} failed ({text}); this machine may be offline: set "
                              "model.source.weights: null for random weights with the same latency") from None
        raise SourceError(f"{spec.where('model', 'source')}: keras.applications.{source.application}"
                          f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {text}") from None
    description = f"keras.applications.{source.application}(weights={source.weights!r})"
    if source.weights is None and source.calibrate:
        done = calibrate(model, photo_batch(spec.model.input))
        description += (f", random weights calibrated on {done['photos']} bundled photos "
                        f"({done['batch_normalizations']} BatchNormalization layers, classifier scaled)")
    return SourceModel(model, lambda images: model(images, training=False), description)


def _keras_file(spec: Spec, source: KerasFileSource) -> SourceModel:
    import keras

    path = spec.resolve(source.path)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise SourceError(f"{spec.where('model', 'source', 'path')}: cannot load Keras model {path}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return SourceModel(model, lambda images: model(images, training=False), f"keras file {path}")


def _import_builder(name: str, beside: Optional[Path]):
    """Import `name` (a.b.c) from the installed packages, else its top package from the spec's directory (builders
    may live beside the spec), without touching sys.path."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        found = importlib.machinery.PathFinder.find_spec(top, [str(beside)]) if beside is not None else None
        if exc.name != top or found is None:
            raise
    module = importlib.util.module_from_spec(found)
    sys.modules[top] = module
    try:
        found.loader.exec_module(module)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(name)


def _builder(spec: Spec, source: BuilderSource) -> SourceModel:
    module_name, function_name = source.function.split(":")
    where = spec.where("model", "source", "function")
    try:
        module = _import_builder(module_name, spec.origin.parent if spec.origin is not None else None)
    except ImportError as exc:
        raise SourceError(f"{where}: model.source.function: cannot import module '{module_name}': {exc}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise SourceError(f"{where}: model.source.function: module '{module_name}' has no function '{function_name}'")
    kwargs = dict(source.args)
    if "input_spec" in inspect.signature(function).parameters:
        kwargs["input_spec"] = spec.model.input
    try:
        model = function(**kwargs)
    except TypeError as exc:
        raise SourceError(f"{spec.where('model', 'source', 'args')}: model.source.args do not fit "
                          f"{source.function}: {exc}") from None
    if not callable(model):
        raise SourceError(f"{where}: {source.function} returned {type(model).__name__}, not a Keras model")
    return SourceModel(model, lambda images: model(images, training=False), f"builder {source.function}")


def _saved_model(spec: Spec, source: SavedModelSource) -> SourceModel:
    import tensorflow as tf

    path = spec.resolve(source.path)
    loaded = tf.saved_model.load(str(path))
    function = loaded.signatures.get(source.signature)
    where = spec.where("model", "source", "signature")
    if function is None:
        raise SourceError(f"{where}: model.source.signature: '{source.signature}' is not a signature of {path}; "
                          f"it has {', '.join(sorted(loaded.signatures)) or 'none'}")
    inputs = function.structured_input_signature[1]
    if len(inputs) != 1:
        raise SourceError(f"{where}: add_signatures needs a signature with exactly one image input; "
                          f"'{source.signature}' has {', '.join(sorted(inputs)) or 'none'}")
    (input_name,) = inputs
    outputs = sorted(function.structured_outputs)
    if len(outputs) != 1:
        raise SourceError(f"{where}: add_signatures needs exactly one output; '{source.signature}' has "
                          f"{', '.join(outputs)}")

    def call(images):
        return function(**{input_name: images})[outputs[0]]

    return SourceModel(loaded, call, f"SavedModel {path} signature {source.signature}")


def _frozen_graph(spec: Spec, source: FrozenGraphSource) -> SourceModel:
    """A TF1 frozen GraphDef, imported into a function pruned from its input to its output tensor."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    path = spec.resolve(source.path)
    where = spec.where("model", "source", "path")
    try:
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
    except OSError as exc:
        raise SourceError(f"{where}: model.source.path: cannot read {path}: {exc.strerror or exc}") from None
    except DecodeError:
        raise SourceError(f"{where}: model.source.path: {path} is not a binary GraphDef (a SavedModel directory "
                          "is kind: saved_model; a text .pbtxt graph must be converted with "
                          "tf.io.write_graph(graph_def, dir, name, as_text=False))") from None
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    placeholders = [n.name + ":0" for n in graph_def.node if n.op == "Placeholder"]
    tensors = {}
    for key in ("input", "output"):
        name = getattr(source, key)
        try:
            tensors[key] = wrapped.graph.as_graph_element(name)
        except (KeyError, ValueError):
            hint = f"its placeholders are {', '.join(placeholders) or 'none'}" if key == "input" else \
                f"its last node is {graph_def.node[-1].name + ':0' if graph_def.node else 'none'}"
            raise SourceError(f"{spec.where('model', 'source', key)}: model.source.{key}: {path} has no tensor "
                              f"'{name}'; {hint}") from None
    shape = tensors["input"].shape
    if tensors["input"].dtype != tf.float32 or shape.rank not in (None, 4):
        raise SourceError(f"{spec.where('model', 'source', 'input')}: model.source.input: '{source.input}' is "
                          f"{tensors['input'].dtype.name} of shape {shape}; a frozen graph source needs a float32 "
                          "image input N x H x W x C (the exporter adds decoding and preprocessing in front of it)")
    function = wrapped.prune(tensors["input"], tensors["output"])
    holder = tf.Module()
    holder.graph_function = function
    return SourceModel(holder, lambda images: function(tf.cast(images, tf.float32)),
                       f"frozen graph {path} ({source.input} -> {source.output})")


def load_source(spec: Spec) -> SourceModel:
    """Build or load the model the spec names (not used for saved_model sources in as_is mode)."""
    source = spec.model.source
    if isinstance(source, KerasApplicationSource):
        return _keras_application(spec, source)
    if isinstance(source, KerasFileSource):
        return _keras_file(spec, source)
    if isinstance(source, BuilderSource):
        return _builder(spec, source)
    if isinstance(source, FrozenGraphSource):
        return _frozen_graph(spec, source)
    return _saved_model(spec, source)
