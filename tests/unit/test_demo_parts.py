"""The demo's pieces without servers: the top-k reading and the upload checks."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from demo.app import BadUpload, inspect_upload
from demo.client import top_classes


def _image(fmt: str, size=(12, 8)) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def test_top_classes_are_best_first_with_labels():
    assert top_classes([[0.1, 0.6, 0.05, 0.25]], ["a", "b", "c", "d"], 3) == (
        (1, "b", 0.6), (3, "d", 0.25), (0, "a", 0.1))
    assert top_classes(np.array([[0.2, 0.8]]), (), 5) == ((1, "1", 0.8), (0, "0", 0.2))  # no labels: indices


def test_uploads_are_checked_before_the_model_sees_them():
    assert inspect_upload(_image("JPEG"), 10**6) == {"format": "JPEG", "width": 12, "height": 8,
                                                      "bytes": len(_image("JPEG"))}
    assert inspect_upload(_image("PNG"), 10**6)["format"] == "PNG"
    cases = [(b"", 400, "empty"), (b"hello world", 400, "starts with text"),
             (b"\x00\x01\x02binary", 400, "starts with binary data"), (_image("GIF"), 415, "JPEG and PNG only"),
             (_image("PNG", (64, 64))[:2000], 400, "PNG file is damaged"), (_image("PNG")[:20], 400, "damaged"),
             (_image("JPEG", (64, 64))[:600], 400, "JPEG file is damaged"), (_image("JPEG"), 413, "limit is 0.0 MB")]
    for body, status, message in cases:
        with pytest.raises(BadUpload, match=message) as raised:
            inspect_upload(body, 10 if status == 413 else 10**6)
        assert raised.value.status == status
