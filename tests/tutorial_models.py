"""SavedModels shaped like the ones serving tutorials end with, each with a signature of its own.

* keras_float: a Keras classifier saved with tf.saved_model.save (Keras 3 names: `inputs` -> `output_0`),
  float images 32 x 32 x 3 in [0, 1];
* string_decoder: encoded image bytes in (`image_bytes_in`), its own decoding and resizing, two outputs;
* image_height_width: a uint8 image plus `height` and `width` inputs (as DeepLab-style exports take);
* tf1_pbtxt: a TF1 SavedModelBuilder export written as saved_model.pbtxt, float images in `x`.

Every answer depends on the image, so the bench's answer checks can fail.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = np.random.default_rng(7).normal(size=(3, 5)).astype(np.float32)


def keras_float(directory: Path) -> Path:
    """Keras 3's own export (model.export): signature serving_default; tf.saved_model.save of a Keras 3 model
    writes variables a TF1 session cannot find (see test_keras_saved_with_tf_saved_model_save_is_one_line)."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    model.export(str(directory), verbose=False)
    return directory


def keras_tf_saved_model_save(directory: Path) -> Path:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(5, activation="softmax")])
    tf.saved_model.save(model, str(directory))
    return directory


def string_decoder(directory: Path) -> Path:
    import tensorflow as tf

    class Decoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes_in")])
        def serve(self, image_bytes_in):
            def one(encoded):
                image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
                image.set_shape([None, None, 3])
                return tf.image.resize(image, (48, 48)) / 255.0
            pixels = tf.map_fn(one, image_bytes_in, fn_output_signature=tf.TensorSpec([48, 48, 3], tf.float32))
            colour = tf.reduce_mean(pixels, axis=[1, 2])
            return {"scores": tf.nn.softmax(tf.matmul(colour, WEIGHTS) * 8.0), "mean_colour": colour}

    module = Decoder()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def image_height_width(directory: Path) -> Path:
    import tensorflow as tf

    class Segmenter(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 40, 40, 3], tf.uint8, name="image"),
                                      tf.TensorSpec([None], tf.int32, name="height"),
                                      tf.TensorSpec([None], tf.int32, name="width")])
        def serve(self, image, height, width):
            pixels = tf.cast(image, tf.float32) / 255.0
            colour = tf.reduce_mean(pixels, axis=[1, 2])
            size = tf.cast(tf.stack([height, width], axis=1), tf.float32) / 40.0
            return {"mask_scores": tf.nn.softmax(tf.matmul(colour, WEIGHTS) * 8.0 + tf.reduce_sum(size, 1,
                                                                                                  keepdims=True))}

    module = Segmenter()
    tf.saved_model.save(module, str(directory), signatures={"predict_mask": module.serve})
    return directory


def tf1_pbtxt(directory: Path) -> Path:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 24, 24, 3], name="x")
        scores = tf.nn.softmax(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), tf.constant(WEIGHTS)) * 8.0,
                               name="y")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(directory))
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": images}, {"y": scores})
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
            builder.save(as_text=True)
    return directory
