"""Models the harness can build itself, without downloads: a small CNN trained on scikit-learn's digits, two
random-weight models whose cost is memory (weight_bound) or arithmetic (compute_bound), and
the protocol floor (an almost free head behind the same signatures as any image model).

Digits are 8x8 grey images (0..16). They are scaled to uint8, then resized and preprocessed with
the very functions the exported serving graph uses, so PNG bytes sent to the server are seen as
the training images were.
"""
from __future__ import annotations

import numpy as np

from exporter.calibrate import calibrate, photo_batch
from exporter.preprocess import preprocess, resize
from spec.schema import InputSpec


def digits_uint8(seed: int = 0, test_fraction: float = 0.2):
    """(train_x, train_y, test_x, test_y): digits as uint8 (N,8,8) images, a fixed seeded split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(len(images) * (1 - test_fraction))
    train, test = order[:split], order[split:]
    return images[train], digits.target[train], images[test], digits.target[test]


def digits_cnn(input_spec: InputSpec, epochs: int = 12, seed: int = 0):
    """Train a small CNN on the training split of the digits; returns a Keras model on preprocessed input."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    train_x, train_y, test_x, test_y = digits_uint8(seed)

    def pixels(images):
        batch = tf.constant(images[..., np.newaxis])
        if input_spec.channels == 3:
            batch = tf.image.grayscale_to_rgb(batch)
        return preprocess(resize(batch, input_spec), input_spec).numpy()

    shape = (input_spec.height, input_spec.width, input_spec.channels)
    model = keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(pixels(train_x), train_y, epochs=epochs, batch_size=64, verbose=2,
              validation_data=(pixels(test_x), test_y))
    return model


def protocol_floor(input_spec: InputSpec, classes: int, seed: int = 0):
    """An almost free head on preprocessed images: each channel's mean, then one Dense layer and a softmax.

    Exported like any model (decode, resize and preprocess inside the graph, the same input and output
    signatures, `classes` probabilities per image), it measures what the protocol and the codec cost on their
    own: its runtime is the decode and preprocessing, not a network.
    """
    import keras

    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive integer (got {classes!r})")
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((input_spec.height, input_spec.width, input_spec.channels)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation="softmax"),
    ], name="protocol_floor")


def _calibrated(model, input_spec: InputSpec):
    """The model with its softmax classifier scaled on the bundled photos: answers that differ by image."""

    calibrate(model, photo_batch(input_spec))
    return model


def weight_bound(input_spec: InputSpec, units: int = 4096, classes: int = 10, seed: int = 0):
    """A model whose cost is reading one large weight matrix: the flattened pixels through a Dense layer of
    `units` (at 64x64x3, 12288 x 4096 floats: 200 MB), then a softmax classifier.

    One image costs a pass over the whole matrix; a batch of 16 costs little more, since the matrix is read once
    per batch: the case where TF Serving's batching pays on a CPU. Random weights, calibrated on the bundled
    photos so that different images get different answers.
    """
    import keras

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((input_spec.height, input_spec.width, input_spec.channels))
    hidden = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(pixels))
    scores = keras.layers.Dense(classes, activation="softmax")(hidden)
    return _calibrated(keras.Model(pixels, scores, name="weight_bound"), input_spec)


def compute_bound(input_spec: InputSpec, channels: int = 128, classes: int = 10, seed: int = 0):
    """A model whose cost is arithmetic on each image: three 3x3 convolutions at full resolution (`channels`
    wide), global pooling and a softmax classifier.

    The convolutions run on one image at a time, the images of a batch one after another (a map over the batch,
    one iteration at a time): a batch of n does n times one image's arithmetic by construction, so batching saves
    only the fixed cost of a call and adds the wait in the batching queue. (Convolved as one tensor, a batch of 2
    cost about a quarter less CPU per image than one image on a 2-core machine, 19.9 against 26.9 core-ms: then
    batching paid, and this model was not the case it stands for.) Random weights, calibrated like
    weight_bound's.
    """
    import keras
    import tensorflow as tf

    class OneImageAtATime(keras.layers.Layer):
        """The convolutions and global pooling, applied to each image of the batch in turn."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.convolutions = [keras.layers.Conv2D(32, 3, padding="same", activation="relu")] + [
                keras.layers.Conv2D(channels, 3, padding="same", activation="relu") for _ in range(2)]

        def build(self, input_shape):
            shape = (1, *input_shape[1:])
            for convolution in self.convolutions:
                convolution.build(shape)
                shape = convolution.compute_output_shape(shape)

        def features(self, image):
            features = image[tf.newaxis]
            for convolution in self.convolutions:
                features = convolution(features)
            return tf.reduce_mean(features, axis=[0, 1, 2])

        def call(self, images):
            return tf.map_fn(self.features, images, parallel_iterations=1, fn_output_signature=tf.float32)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], channels)

    keras.utils.set_random_seed(seed)
    pixels = keras.Input((input_spec.height, input_spec.width, input_spec.channels))
    scores = keras.layers.Dense(classes, activation="softmax")(OneImageAtATime(name="convolutions")(pixels))
    return _calibrated(keras.Model(pixels, scores, name="compute_bound"), input_spec)
