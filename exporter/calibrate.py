"""Random weights whose answers depend on the image: a data-dependent initialisation from the bundled photos.

A keras.applications network with `weights: null` has Glorot-initialised convolutions and BatchNormalization
layers that are the identity at inference (moving mean 0, variance 1). Through MobileNetV2's 50-odd layers the
activations shrink to about 1e-12, so the softmax answers 1/classes for every class on any input, and no answer
check can tell a right answer from a wrong one. Calibration keeps the random weights and the graph (so the
latency is the network's own) and only sets statistics:

* each BatchNormalization's moving mean and variance, in graph order, to those of its input over a batch of the
  bundled photos: every normalised activation keeps unit scale to the end;
* the final Dense classifier's scale and bias, so that its logits, centred over the photos, have a standard
  deviation of LOGIT_STD: different photos get different, decisive top-1 classes.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from exporter.images import bundled_photos
from exporter.preprocess import preprocess, resize
from spec.schema import InputSpec

LOGIT_STD = 3.0


def photo_batch(input_spec: InputSpec) -> np.ndarray:
    """The bundled photos resized and preprocessed as the model's input (float32 N,H,W,C)."""
    import tensorflow as tf

    batch = []
    for _name, pixels in bundled_photos():
        image = tf.constant(pixels[np.newaxis])
        if input_spec.channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        batch.append(preprocess(resize(image, input_spec), input_spec).numpy())
    return np.concatenate(batch).astype(np.float32)


def calibrate(model, batch: np.ndarray) -> dict:
    """Set `model`'s BatchNormalization statistics and classifier scale from `batch`; what was changed."""
    import keras

    normalisations = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in normalisations:  # in graph order: each sees the already calibrated layers before it
        inputs = np.asarray(keras.Model(model.input, layer.input)(batch, training=False))
        axes = tuple(i for i in range(inputs.ndim) if i != (layer.axis if layer.axis >= 0 else inputs.ndim - 1))
        layer.moving_mean.assign(inputs.mean(axis=axes))
        layer.moving_variance.assign(inputs.var(axis=axes))
    classifier: Optional[object] = model.layers[-1] if isinstance(model.layers[-1], keras.layers.Dense) else None
    scale = None
    if classifier is not None and classifier.use_bias:
        features = np.asarray(keras.Model(model.input, classifier.input)(batch, training=False), np.float64)
        kernel = np.asarray(classifier.kernel, np.float64)
        centre = features.mean(axis=0)
        spread = float(((features - centre) @ kernel).std())
        if spread > 0:
            scale = LOGIT_STD / spread
            classifier.kernel.assign((kernel * scale).astype(np.float32))
            classifier.bias.assign((-(centre @ kernel) * scale).astype(np.float32))
    return {"batch_normalizations": len(normalisations), "classifier_scale": scale, "photos": int(len(batch))}
