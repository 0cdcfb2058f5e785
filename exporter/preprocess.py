"""In-graph image decoding, resizing and preprocessing, shared by export, training and verification.

The exported serving graph, the digits trainer and the verifier all call these functions, so the
pixels a model sees at serving time are computed exactly as they were in training and verification.
"""
from __future__ import annotations

from spec.schema import InputSpec


def preprocess(images, input_spec: InputSpec):
    """float32 pixels in [0, 255] (N,H,W,C) -> the model's input range, as the spec's preprocessing says."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    pre = input_spec.preprocessing
    if pre.mode == "unit":
        return images / 255.0
    if pre.mode == "symmetric":
        return images / 127.5 - 1.0
    if pre.mode == "mean_std":
        mean = tf.constant(pre.mean, tf.float32)
        std = tf.constant(pre.std, tf.float32)
        return (images / 255.0 - mean) / std
    return images


def resize(images, input_spec: InputSpec):
    """uint8 or float (N,H,W,C) -> float32 (N,height,width,C), pixel values kept in [0, 255]."""
    import tensorflow as tf

    return tf.image.resize(images, (input_spec.height, input_spec.width), method=input_spec.resize_method)


def decode_one(encoded, input_spec: InputSpec):
    """One JPEG/PNG/GIF/BMP string -> float32 (height, width, channels) in [0, 255]."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=input_spec.channels, expand_animations=False)
    image.set_shape([None, None, input_spec.channels])
    return resize(image[tf.newaxis], input_spec)[0]


def decode_batch(encoded_batch, input_spec: InputSpec):
    """A [N] string batch -> float32 (N, height, width, channels) model input, preprocessed."""
    import tensorflow as tf

    pixels = tf.map_fn(lambda e: decode_one(e, input_spec), encoded_batch,
                       fn_output_signature=tf.TensorSpec([input_spec.height, input_spec.width, input_spec.channels],
                                                         tf.float32))
    return preprocess(pixels, input_spec)


def expected_input(input_spec: InputSpec) -> dict:
    """What the exported tensor signature expects, in words and numbers (for provenance and `inspect`)."""
    pre = input_spec.preprocessing
    if pre.mode == "unit":
        formula, low, high = "x / 255", [0.0], [1.0]
    elif pre.mode == "symmetric":
        formula, low, high = "x / 127.5 - 1", [-1.0], [1.0]
    elif pre.mode == "mean_std":
        formula = f"(x / 255 - mean) / std with mean {list(pre.mean)}, std {list(pre.std)}"
        low = [round((0.0 - m) / d, 6) for m, d in zip(pre.mean, pre.std)]
        high = [round((1.0 - m) / d, 6) for m, d in zip(pre.mean, pre.std)]
    else:
        formula, low, high = "x (raw pixel values)", [0.0], [255.0]
    return {"height": input_spec.height, "width": input_spec.width, "channels": input_spec.channels,
            "resize_method": input_spec.resize_method, "preprocessing": pre.model_dump(mode="json"),
            "formula": formula, "value_range": [min(low), max(high)], "value_range_per_channel": [low, high]
            if len(low) > 1 else None}
