"""The serving contract of an image model exported by this harness: signature, input and output names.

The exporter writes these, the load tests, the demo, the benchmarks and the checks read them; this module is the
only place they are spelled. (The server knows none of them: it serves any signature, as TF Serving does.)
"""
from __future__ import annotations

IMAGE_SIGNATURE = "serving_default"      # encoded JPEG/PNG bytes in, decoded and resized in the graph
IMAGE_INPUT = "image_bytes"              # DT_STRING [N]
TENSOR_SIGNATURE = "predict_tensor"      # the preprocessed float tensor in
TENSOR_INPUT = "images"                  # DT_FLOAT [N, H, W, C]
CLASSIFY_SIGNATURE = "classify"          # tensorflow/serving/classify over serialized tf.Examples
CLASSIFY_INPUT = "inputs"
IMAGE_FEATURE = "image/encoded"          # the tf.Example feature holding the image bytes
CLASSIFY_OUTPUTS = ("classes", "scores")  # top-k labels and their scores
OUTPUT = "probabilities"                 # [N, classes], of serving_default and predict_tensor

SIGNATURE_KINDS = (IMAGE_SIGNATURE, TENSOR_SIGNATURE, CLASSIFY_SIGNATURE)

# What a bench sends (benchmark.payloads, PAYLOADS=): the first three through this contract's signatures (image_b64
# to IMAGE_SIGNATURE, the float tensors to TENSOR_SIGNATURE); tensor_uint8 only into a SavedModel's own uint8 image
# input (a model benchmarked through its own signature)
CONTRACT_PAYLOADS = ("image_b64", "tensor_row", "tensor_columnar")
PAYLOADS = CONTRACT_PAYLOADS + ("tensor_uint8",)
DEFAULT_PAYLOADS = ("image_b64", "tensor_row")
