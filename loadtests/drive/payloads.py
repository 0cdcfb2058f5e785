"""The benchmark's requests: the same real images, rendered once for every protocol and encoding.

A PayloadSet holds, for each image (a real photo resized to a spec resolution, in a seeded order):
its JPEG bytes, the preprocessed float tensor the model sees (computed with the exporter's own
in-graph preprocessing, so both paths give the same answer), and the probabilities the exported
model gives in-process. It is built once (TensorFlow needed: measure/payloadsets.py), cached as an .npz, and
loaded by the Locust processes (numpy only). Rendering and answer checks live here too, free of Locust.

Encodings (spec `benchmark.payloads`) and what each protocol sends for them:
  image_b64        REST {"instances": [{"b64": JPEG}]}      gRPC `image_bytes` DT_STRING (raw JPEG bytes)
  tensor_row       REST {"instances": [float HxWxC]}         gRPC `images` DT_FLOAT in tensor_content
  tensor_columnar  REST {"inputs": [float HxWxC]}            gRPC as tensor_row (gRPC has one tensor encoding)
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from loadtests.drive import jsonfloat, wire
from loadtests.drive.files import save_atomically
from loadtests.drive.foreign import ForeignPayloadSet
from server.tensors.dtypes import DType
from spec.contract import CONTRACT_PAYLOADS, IMAGE_INPUT, IMAGE_SIGNATURE, OUTPUT, TENSOR_INPUT, TENSOR_SIGNATURE
from spec.errors import HarnessError

SIGNATURE_FOR = {"image_b64": IMAGE_SIGNATURE, "tensor_row": TENSOR_SIGNATURE, "tensor_columnar": TENSOR_SIGNATURE}
GRPC_WIRE = {"image_b64": IMAGE_INPUT, "tensor_row": "tensor_content", "tensor_columnar": "tensor_content",
             "tensor_uint8": "tensor_content"}  # tensor_uint8: only for a SavedModel's own uint8 image input
PAYLOADS = CONTRACT_PAYLOADS  # through the harness's own signatures (SIGNATURE_FOR)
# answers may differ by float noise (batching, thread counts); a top-1 within this of the max is the same answer
SCORE_TOLERANCE = 1e-4
INFORMATIVE_SPREAD = 10 * SCORE_TOLERANCE  # answers must differ between images by more than this
FORMAT = 2  # bump when the cached file layout or the rendering changes


class PayloadError(HarnessError):
    """The payloads cannot be built for this model or spec; the message says why and what to do."""


@dataclass
class PayloadSet:
    model: str
    names: list[str]                  # "<photo>@<w>x<h>"
    sizes: list[tuple[int, int]]      # (width, height) of the encoded image
    jpegs: list[bytes]
    tensors: np.ndarray               # float32 [N, H, W, C], the model input after preprocessing
    expected: np.ndarray              # float32 [N, classes], in-process answer of serving_default
    source: dict = field(default_factory=dict)
    batch_size: int = 1               # images per request: request i holds images i, i+1, ... (cyclically)
    kind = "contract"

    def __len__(self) -> int:
        return len(self.jpegs)

    @property
    def expected_top1(self) -> np.ndarray:
        return self.expected.argmax(axis=1)

    def save(self, path: Path) -> None:
        """Write as one .npz (atomic rename), loadable without TensorFlow."""
        save_atomically(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The .npz file's bytes: what a Locust master sends its workers, so they need no export or spec."""
        offsets = np.cumsum([0] + [len(j) for j in self.jpegs]).astype(np.int64)
        meta = {"model": self.model, "names": self.names, "sizes": self.sizes, "source": self.source,
                "format": FORMAT, "batch_size": self.batch_size}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 jpegs=np.frombuffer(b"".join(self.jpegs), np.uint8), offsets=offsets,
                 tensors=self.tensors, expected=self.expected)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> "PayloadSet":
        return cls.from_bytes(Path(path).read_bytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> "PayloadSet":
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta.get("kind") == "foreign":
                return ForeignPayloadSet.from_arrays(meta, data)
            jpeg_blob, offsets = data["jpegs"].tobytes(), data["offsets"]
            jpegs = [jpeg_blob[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
            return cls(model=meta["model"], names=meta["names"], sizes=[tuple(s) for s in meta["sizes"]],
                       jpegs=jpegs, tensors=data["tensors"], expected=data["expected"], source=meta["source"],
                       batch_size=meta.get("batch_size", 1))

    # ------------------------------------------------------------------------------ rendering

    def _images(self, index: int) -> list[int]:
        return [(index + k) % len(self) for k in range(self.batch_size)]

    def rest_body(self, payload: str, index: int) -> bytes:
        """The REST :predict body for request `index` (batch_size images) in one encoding."""
        chosen = self._images(index)
        if payload == "image_b64":
            return image_rest_body(*(self.jpegs[i] for i in chosen))
        key = "instances" if payload == "tensor_row" else "inputs"
        # full float32 precision: the server computes on exactly the values `expected` was computed on
        return jsonfloat.dumps({"signature_name": TENSOR_SIGNATURE,
                                key: self.tensors[chosen].astype(np.float32, copy=False)}).encode()

    def grpc_request(self, payload: str, index: int, model: str):
        """The PredictRequest for request `index` (loadtests.drive.wire's message: no TensorFlow import)."""
        chosen = self._images(index)
        if payload == "image_b64":
            return image_grpc_request(*(self.jpegs[i] for i in chosen), model=model)
        request = _predict_request(model, SIGNATURE_FOR[payload])
        array = np.ascontiguousarray(self.tensors[chosen], dtype=np.float32)
        tensor = request.inputs[TENSOR_INPUT]
        tensor.dtype, tensor.tensor_content = DType.FLOAT, array.tobytes()
        tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=d) for d in array.shape)
        return request

    # ------------------------------------------------------------------------------ checking

    def check(self, index: int, probabilities) -> Optional[str]:
        """None if `probabilities` (the answer to request `index`) is right, else why it is wrong."""
        if isinstance(probabilities, dict):
            probabilities = probabilities.get(OUTPUT)
        classes = self.expected.shape[1]
        try:
            probs = np.asarray(probabilities, dtype=np.float64)
        except (TypeError, ValueError):
            return f"'{OUTPUT}' is not a numeric array"
        if probs.shape != (self.batch_size, classes):
            return f"'{OUTPUT}' has shape {list(probs.shape)}, expected [{self.batch_size}, {classes}]"
        if not np.isfinite(probs).all():
            return f"'{OUTPUT}' holds NaN or Inf"
        for row, image in enumerate(self._images(index)):
            want, got = int(self.expected_top1[image]), int(probs[row].argmax())
            if got != want and probs[row, want] < probs[row, got] - SCORE_TOLERANCE:
                return (f"{self.names[image]}: top-1 class {got} (p={probs[row, got]:.5f}), but the model "
                        f"in-process answers {want} (p={self.expected[image, want]:.5f})")
        return None

    def answer_rest(self, body: bytes) -> dict:
        return {OUTPUT: probabilities_from_rest(body)}

    def answer_grpc(self, response) -> dict:
        return {OUTPUT: probabilities_from_grpc(response)}

    def compare(self, index: int, answer: dict) -> tuple[float, Optional[str]]:
        """The correctness check's strict comparison: same top-1 and every score within SCORE_TOLERANCE."""
        got = np.asarray(answer[OUTPUT], dtype=np.float64)
        chosen = self._images(index)
        expected = self.expected[chosen].astype(np.float64)
        if got.shape != expected.shape:
            return 0.0, f"answer shape {list(got.shape)}, in-process {list(expected.shape)}"
        diff = float(np.abs(got - expected).max())
        for row, image in enumerate(chosen):
            top, want = int(got[row].argmax()), int(expected[row].argmax())
            if top != want or diff > SCORE_TOLERANCE:
                return diff, (f"image {self.names[image]}: top-1 {top} vs in-process {want}, max score difference "
                              f"{diff:.2e} (allowed {SCORE_TOLERANCE:g})")
        return diff, None


class Verdicts:
    """The load test's answer checks, each distinct answer checked once.

    Every answer is checked; an answer byte-identical to one already checked for the same request has the same
    verdict, which is remembered (a model on CPU gives the same bytes for the same image), so thousands of identical
    answers are not parsed again. Answers that differ every time are all checked; memory stays bounded.
    """
    KEPT = 4096

    def __init__(self, payloads: PayloadSet):
        self.payloads = payloads
        self.known: dict[tuple[int, bytes], Optional[str]] = {}
        self.checked = 0  # answers actually parsed and checked (the rest were byte-identical to one of them)

    def rest(self, image: int, body: bytes) -> Optional[str]:
        """None if `body` is the right :predict answer to request `image`, else why not."""
        key = (image, body)
        if key in self.known:
            return self.known[key]
        try:
            verdict = self.payloads.check(image, self.payloads.answer_rest(body))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            verdict = f"unreadable :predict answer ({exc})"
        return self._remember(key, verdict)

    def grpc(self, image: int, message: bytes) -> Optional[str]:
        """As `rest`, for a serialized PredictResponse."""
        key = (image, message)
        if key in self.known:
            return self.known[key]
        from google.protobuf.message import DecodeError
        try:
            verdict = self.payloads.check(image, self.payloads.answer_grpc(wire.parse_response(message)))
        except (DecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
            verdict = f"unreadable PredictResponse ({exc})"
        return self._remember(key, verdict)

    def _remember(self, key: tuple[int, bytes], verdict: Optional[str]) -> Optional[str]:
        self.checked += 1
        if len(self.known) >= self.KEPT:
            self.known.clear()
        self.known[key] = verdict
        return verdict


def answer_spread(expected: np.ndarray) -> dict:
    """Do the in-process answers depend on the image? A check can only catch a wrong answer when they do.

    Informative when some score differs between two images by more than INFORMATIVE_SPREAD (ten times the
    tolerance every check allows): then a server answering with the wrong image's scores, or a constant, fails
    the check for some image.
    """
    expected = np.asarray(expected, np.float64)
    if expected.ndim != 2 or expected.shape[1] == 0:
        return {"informative": False, "images": len(expected), "max_score_spread": 0.0, "distinct_top1": 0,
                "reason": "the signature has no numeric output to compare between images"}
    spread = float(np.ptp(expected, axis=0).max()) if len(expected) > 1 else 0.0
    distinct = len(set(expected.argmax(axis=1).tolist())) if len(expected) else 0
    informative = len(expected) > 1 and spread > INFORMATIVE_SPREAD
    if len(expected) < 2:
        why = "only one benchmark image: whether the answers depend on the input cannot be told"
    elif not informative:
        why = (f"the model gives the same answer for all {len(expected)} benchmark images (largest score difference "
               f"between images {spread:.2e}, top-1 class {int(expected[0].argmax())} for every one): no answer "
               "check can tell a right answer from a wrong one")
    else:
        why = ""
    return {"informative": informative, "images": len(expected), "max_score_spread": spread,
            "distinct_top1": distinct, "reason": why}


def image_rest_body(*images: bytes) -> bytes:
    """The REST :predict body sending encoded images (JPEG or PNG) as b64 to serving_default."""
    body = {"signature_name": IMAGE_SIGNATURE,
            "instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images]}
    return json.dumps(body, separators=(",", ":")).encode()


def _predict_request(model: str, signature: str):
    request = wire.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.output_filter.append(OUTPUT)
    return request


def image_grpc_request(*images: bytes, model: str):
    """The PredictRequest sending encoded images' raw bytes (DT_STRING [N]) to serving_default."""
    request = _predict_request(model, IMAGE_SIGNATURE)
    tensor = request.inputs[IMAGE_INPUT]
    tensor.dtype = DType.STRING
    tensor.string_val.extend(images)
    tensor.tensor_shape.dim.add(size=len(images))
    return request


def probabilities_from_rest(body: bytes) -> object:
    """The probabilities array from a :predict JSON answer (row or columnar)."""
    answer = json.loads(body)
    if "predictions" in answer:
        return answer["predictions"]
    outputs = answer.get("outputs")
    return outputs[OUTPUT] if isinstance(outputs, dict) else outputs


def probabilities_from_grpc(response) -> np.ndarray:
    """The probabilities array from a PredictResponse (tensor_content or float_val)."""
    tensor = response.outputs[OUTPUT]
    shape = [d.size for d in tensor.tensor_shape.dim]
    values = (np.frombuffer(tensor.tensor_content, np.float32) if tensor.tensor_content
              else np.asarray(tensor.float_val, np.float32))
    return values.reshape(shape)


def request_bytes(payloads: PayloadSet, protocol: str, payload: str, model: str) -> list[int]:
    """Bytes on the wire per request body, per image (HTTP/2 and HTTP headers not counted)."""
    if protocol == "rest":
        return [len(payloads.rest_body(payload, i)) for i in range(len(payloads))]
    return [payloads.grpc_request(payload, i, model).ByteSize() for i in range(len(payloads))]


def cells(protocols: Sequence[str], payloads: Sequence[str]) -> list[tuple[str, str]]:
    """(protocol, payload) runs of a sweep, protocols interleaved; gRPC's one tensor encoding runs once."""
    result, grpc_wires = [], set()
    for payload in payloads:
        for protocol in protocols:
            if protocol == "grpc":
                if GRPC_WIRE[payload] in grpc_wires:
                    continue
                grpc_wires.add(GRPC_WIRE[payload])
            result.append((protocol, payload))
    return result


def wire_name(protocol: str, payload: str) -> str:
    return payload if protocol == "rest" else GRPC_WIRE[payload]


# ---------------------------------------------------------------------------------- building
