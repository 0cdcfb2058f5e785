"""Payloads for a SavedModel's own signature: what `make bench` sends to a model this harness did not export.

The bench reads the served signature (inputs, dtypes, shapes) and builds requests for it from the same real
photos as for its own exports:

* a DT_STRING image input gets the encoded image bytes (payload `image_b64`: REST `{"b64": ...}`, gRPC the raw
  bytes);
* a DT_FLOAT image input [N, H, W, C] gets the decoded photo resized to the signature's H x W (the spec's when the
  signature leaves them open) with the spec's preprocessing (payload `tensor_row` or `tensor_columnar`);
* a DT_UINT8 image input gets the decoded, resized pixels as they are (payload `tensor_uint8`);
* every other input comes from `benchmark.extra_inputs`: a value, or `image_height` / `image_width` (the size of
  the image being sent), in the input's dtype and shape.

`benchmark.batch_size` images go into each request. The in-process answer of every output is computed from the
same inputs, and every output of every answer is checked against it.

This module is what a Locust process needs: the set, its requests and its checks. Reading the signature and
building the set (the spec schema, the exporter's preprocessing, TensorFlow) is loadtests.measure.foreignplan.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from loadtests.drive import jsonfloat, wire
from loadtests.drive.files import save_atomically
from server.tensors.dtypes import NUMPY_DTYPES
from server.tensors.proto import array_to_proto, proto_to_array

DERIVED = ("image_height", "image_width")
IMAGE_PAYLOADS = {"bytes": ("image_b64",), "float": ("tensor_row", "tensor_columnar"), "uint8": ("tensor_uint8",)}
ABS_TOLERANCE = 1e-4   # as the contract path's SCORE_TOLERANCE, plus a relative part for large outputs
REL_TOLERANCE = 1e-4
FORMAT = 1


@dataclass(frozen=True)
class Extra:
    alias: str
    dtype: int                       # TF DataType enum
    shape: Optional[tuple[int, ...]]  # the signature's (-1 for the batch dimension)
    value: object                    # a number or list from the spec, or one of DERIVED


@dataclass(frozen=True)
class Plan:
    signature: str
    image_input: str
    image_kind: str                  # bytes | float | uint8
    height: int
    width: int
    channels: int
    extras: tuple[Extra, ...]
    outputs: tuple[str, ...]
    batched: bool                    # every input has a batch dimension (REST row format possible)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        extras = tuple(Extra(e["alias"], e["dtype"], tuple(e["shape"]) if e["shape"] is not None else None,
                             e["value"]) for e in data["extras"])
        return cls(**{**data, "extras": extras, "outputs": tuple(data["outputs"])})


@dataclass
class ForeignPayloadSet:
    """The contract PayloadSet's interface for any signature: rendering, answers and their checks."""
    model: str
    names: list[str]
    sizes: list[tuple[int, int]]
    jpegs: list[bytes]
    tensors: np.ndarray               # the image input as sent (float32 or uint8 [N, H, W, C]; empty for bytes)
    outputs: dict[str, np.ndarray]    # in-process answer per output, one row per request
    plan: Plan
    batch_size: int = 1
    source: dict = field(default_factory=dict)

    kind = "foreign"

    def __len__(self) -> int:
        return len(self.jpegs)

    @property
    def expected(self) -> np.ndarray:
        """Every numeric output of each request, flattened side by side (for answer_spread)."""
        numeric = [v.reshape(len(self), -1).astype(np.float64) for v in self.outputs.values()
                   if v.dtype != object and v.dtype.kind in "fiub"]
        return np.concatenate(numeric, axis=1) if numeric else np.zeros((len(self), 0))

    # ------------------------------------------------------------------------------ the request's inputs

    def _images(self, index: int) -> list[int]:
        return [(index + k) % len(self) for k in range(self.batch_size)]

    def inputs(self, index: int) -> dict[str, np.ndarray]:
        """Request `index`'s inputs by alias, as numpy arrays of the signature's dtypes."""

        chosen = self._images(index)
        if self.plan.image_kind == "bytes":
            image = np.array([self.jpegs[i] for i in chosen], dtype=object)
        else:
            image = self.tensors[chosen]
        values = {self.plan.image_input: image}
        width, height = (self.sizes[chosen[0]] if self.plan.image_kind == "bytes"
                         else (self.plan.width, self.plan.height))
        for extra in self.plan.extras:
            raw = {"image_height": height, "image_width": width}.get(extra.value, extra.value) \
                if isinstance(extra.value, str) else extra.value
            dtype = NUMPY_DTYPES.get(extra.dtype, object)
            array = np.asarray(raw, dtype=dtype)
            shape = extra.shape
            if shape is not None and len(shape) >= 1 and shape[0] == -1 and array.ndim < len(shape):
                rest = tuple(d if d > 0 else 1 for d in shape[1:])  # one value per image in the batch
                array = np.broadcast_to(array, (len(chosen), *rest))
            values[extra.alias] = np.ascontiguousarray(array)
        return values

    # ------------------------------------------------------------------------------ rendering

    def rest_body(self, payload: str, index: int) -> bytes:
        values = self.inputs(index)
        columnar = payload == "tensor_columnar" or not self.plan.batched

        def plain(alias: str, array: np.ndarray):
            if array.dtype == object:
                return [{"b64": base64.b64encode(v).decode("ascii")} for v in array.reshape(-1)] \
                    if array.ndim else {"b64": base64.b64encode(array.item()).decode("ascii")}
            if array.dtype.kind == "f":
                return array  # written at full precision by jsonfloat.dumps
            return array.tolist()
        body: dict = {"signature_name": self.plan.signature}
        if columnar:
            body["inputs"] = {alias: plain(alias, array) for alias, array in values.items()}
        elif len(values) == 1:
            body["instances"] = plain(self.plan.image_input, values[self.plan.image_input])
        else:
            lists = {alias: plain(alias, array) for alias, array in values.items()}
            body["instances"] = [{alias: lists[alias][k] for alias in lists} for k in range(self.batch_size)]
        return jsonfloat.dumps(body).encode()

    def grpc_request(self, payload: str, index: int, model: str):
        request = wire.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = self.plan.signature
        for alias, array in self.inputs(index).items():
            tf_dtype = next(e.dtype for e in self.plan.extras if e.alias == alias) if alias != self.plan.image_input \
                else None
            request.inputs[alias].CopyFrom(array_to_proto(array, tf_dtype, as_content=array.dtype != object,
                                                          message=wire.TensorProto))
        return request

    # ------------------------------------------------------------------------------ answers

    def answer_rest(self, body: bytes) -> dict[str, np.ndarray]:
        answer = json.loads(body)
        outputs = self.plan.outputs
        if "predictions" in answer:
            rows = answer["predictions"]
            if len(outputs) == 1:
                return {outputs[0]: _array(rows)}
            return {alias: _array([row[alias] for row in rows]) for alias in outputs}
        found = answer.get("outputs")
        if isinstance(found, dict):
            return {alias: _array(found[alias]) for alias in outputs}
        return {outputs[0]: _array(found)}

    def answer_grpc(self, response) -> dict[str, np.ndarray]:
        return {alias: proto_to_array(response.outputs[alias]) for alias in self.plan.outputs}

    def compare(self, index: int, answer: dict[str, np.ndarray]) -> tuple[float, Optional[str]]:
        """(largest difference, None) when request `index`'s answer matches in-process, else (.., why not)."""
        worst = 0.0
        for alias in self.plan.outputs:
            if alias not in answer:
                return worst, f"the answer has no output '{alias}'"
            want = self.outputs[alias][index]
            got = np.asarray(answer[alias])
            if want.dtype == object or got.dtype.kind in "OSU":
                same = np.array_equal(np.asarray(got, dtype=object).reshape(-1).astype(str),
                                      np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v))(
                                          want.reshape(-1)).astype(str)) if got.size == want.size else False
                if not same:
                    return worst, f"output '{alias}' is {got.reshape(-1)[:4].tolist()}, in-process " \
                                  f"{want.reshape(-1)[:4].tolist()}"
                continue
            if got.shape != want.shape:
                return worst, f"output '{alias}' has shape {list(got.shape)}, in-process {list(want.shape)}"
            got = got.astype(np.float64)
            if not np.isfinite(got).all() and np.isfinite(want).all():
                return worst, f"output '{alias}' holds NaN or Inf"
            diff = float(np.max(np.abs(got - want))) if got.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(got, want, atol=ABS_TOLERANCE, rtol=REL_TOLERANCE):
                return worst, (f"{self.names[index]}: output '{alias}' differs from the in-process answer by "
                               f"{diff:.3g} (allowed {ABS_TOLERANCE:g} + {REL_TOLERANCE:g} x |value|)")
        return worst, None

    def check(self, index: int, answer) -> Optional[str]:
        return self.compare(index, answer)[1]

    # ------------------------------------------------------------------------------ files

    def to_bytes(self) -> bytes:
        offsets = np.cumsum([0] + [len(j) for j in self.jpegs]).astype(np.int64)
        meta = {"kind": self.kind, "model": self.model, "names": self.names, "sizes": self.sizes,
                "source": self.source, "plan": self.plan.to_json(), "batch_size": self.batch_size,
                "outputs": list(self.outputs), "format": FORMAT}
        arrays = {f"out_{i}": (v.astype(str) if v.dtype == object else v) for i, v in enumerate(self.outputs.values())}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 jpegs=np.frombuffer(b"".join(self.jpegs), np.uint8), offsets=offsets, tensors=self.tensors, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_arrays(cls, meta: dict, data) -> "ForeignPayloadSet":
        jpeg_blob, offsets = data["jpegs"].tobytes(), data["offsets"]
        jpegs = [jpeg_blob[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        outputs = {}
        for i, alias in enumerate(meta["outputs"]):
            value = data[f"out_{i}"]
            outputs[alias] = value.astype(object) if value.dtype.kind == "U" else value
        return cls(meta["model"], meta["names"], [tuple(s) for s in meta["sizes"]], jpegs, data["tensors"], outputs,
                   Plan.from_json(meta["plan"]), meta["batch_size"], meta["source"])

    def save(self, path: Path) -> None:
        save_atomically(path, self.to_bytes())


def _array(value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "U":  # strings come back as text (or {"b64": ...} objects for binary)
        return array.astype(object)
    return array
