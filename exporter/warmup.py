"""Warmup records: assets.extra/tf_serving_warmup_requests, replayed by the server before a version goes live."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from server.dataplane import WARMUP_FILE
from spec import contract as c


def write_warmup(version_dir: Path, model_name: str, encoded_images: Sequence[bytes], signatures: Sequence[str]) -> int:
    """Write one PredictionLog per image for serving_default (else predict_tensor is skipped). Returns the count."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    if c.IMAGE_SIGNATURE not in signatures:
        return 0
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in encoded_images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=c.IMAGE_SIGNATURE))
            request.inputs[c.IMAGE_INPUT].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(encoded_images)
