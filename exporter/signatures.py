"""The serving module: signatures for what clients really send, saved as a SavedModel.

* serving_default: `image_bytes` DT_STRING [N] (JPEG/PNG of any size; REST clients send {"b64": ...})
  -> `probabilities` float32 [N, classes]. Decoding and resizing happen inside the graph.
* predict_tensor: `images` float32 [N, H, W, C] already preprocessed -> `probabilities`.
* classify (method tensorflow/serving/classify): `inputs` serialized tf.Example [N] with the JPEG/PNG
  in feature `image/encoded` -> top-k `classes` (label strings) and `scores`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from exporter.preprocess import decode_batch
from exporter.sources import SourceModel
from spec import contract as c
from spec.schema import Spec

CLASSIFY_METHOD = "tensorflow/serving/classify"


def head(outputs, mode: str):
    """The model's raw outputs as class probabilities: as they are, softmax of logits, or [1 - p, p] of a sigmoid.

    Both the exported graph and the export's verification use this, so they compare the same thing.
    """
    import tensorflow as tf

    outputs = tf.convert_to_tensor(outputs)
    if mode == "logits":
        return tf.nn.softmax(outputs, axis=-1)
    if mode == "sigmoid":
        return tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


def build_functions(spec: Spec, source: SourceModel, labels: Sequence[str]) -> dict[str, tuple]:
    """{signature name: (python function, input_signature)} for every signature the spec exports."""
    import tensorflow as tf

    input_spec = spec.model.input
    mode = spec.model.outputs
    top_k = min(spec.export.top_k, len(labels))
    label_table = tf.constant(list(labels), dtype=tf.string)

    def probabilities(images):
        return head(source.call(images), mode)

    def serve_bytes(image_bytes):
        return {c.OUTPUT: probabilities(decode_batch(image_bytes, input_spec))}

    def serve_tensor(images):
        return {c.OUTPUT: probabilities(images)}

    def classify(inputs):
        features = tf.io.parse_example(inputs, {c.IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        scores, indices = tf.math.top_k(probabilities(decode_batch(features[c.IMAGE_FEATURE], input_spec)), k=top_k)
        classes_name, scores_name = c.CLASSIFY_OUTPUTS
        return {classes_name: tf.gather(label_table, indices), scores_name: scores}

    shape = [None, input_spec.height, input_spec.width, input_spec.channels]
    functions = {
        c.IMAGE_SIGNATURE: (serve_bytes, [tf.TensorSpec([None], tf.string, c.IMAGE_INPUT)]),
        c.TENSOR_SIGNATURE: (serve_tensor, [tf.TensorSpec(shape, tf.float32, c.TENSOR_INPUT)]),
        c.CLASSIFY_SIGNATURE: (classify, [tf.TensorSpec([None], tf.string, c.CLASSIFY_INPUT)]),
    }
    return {name: functions[name] for name in spec.export.signatures}


def save(source: SourceModel, functions: dict[str, tuple], directory: Path) -> None:
    """Save the signatures and set the classify method name, which the savers cannot set themselves.

    Keras models go through keras.export.ExportArchive, which tracks the backing tf.Variables: a plain
    tf.saved_model.save of a Keras 3 model writes variable handles a TF1 session (TF Serving) cannot
    resolve. Other sources (a loaded SavedModel) hold plain tf.Variables and use tf.saved_model.save.
    """
    import keras
    import tensorflow as tf

    if isinstance(source.trackable, keras.Model):
        archive = keras.export.ExportArchive()
        archive.track(source.trackable)
        for name, (function, input_signature) in functions.items():
            archive.add_endpoint(name, function, input_signature=input_signature)
        archive.write_out(str(directory), verbose=False)
    else:
        module = tf.Module()
        module.source = source.trackable
        concrete = {name: tf.function(function, input_signature=signature).get_concrete_function()
                    for name, (function, signature) in functions.items()}
        tf.saved_model.save(module, str(directory), signatures=concrete)
    if c.CLASSIFY_SIGNATURE in functions:
        set_method_name(directory, c.CLASSIFY_SIGNATURE, CLASSIFY_METHOD)


def set_method_name(directory: Path, signature: str, method_name: str) -> None:
    """Rewrite one signature's method_name in saved_model.pb (and refresh the fingerprint)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(directory) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if signature in meta_graph.signature_def:
            meta_graph.signature_def[signature].method_name = method_name
    path.write_bytes(saved_model.SerializeToString(deterministic=True))
    fingerprint = Path(directory) / "fingerprint.pb"
    if fingerprint.exists():
        try:
            from tensorflow.python.saved_model import fingerprinting_utils
            fingerprint.unlink()
            fingerprinting_utils.write_fingerprint(str(directory))
        except (ImportError, AttributeError):
            pass  # the fingerprint is informational; TF Serving does not require it
