"""Building payloads for a SavedModel's own signature (the bench's side of loadtests.drive.foreign).

`plan_for` reads the served signature from saved_model.pb and decides how to feed it from the spec; `build` decodes
and resizes the photos for that plan and computes the in-process answers with TensorFlow. What a Locust process
needs of the result (the set, its requests and its checks) is loadtests.drive.foreign, which imports none of this:
a load generator must not pay for the spec schema, the exporter's preprocessing or the server's model loader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.describe import read_meta_graphs
from exporter.preprocess import decode_one, preprocess
from loadtests.drive.foreign import DERIVED, Extra, ForeignPayloadSet, Plan
from server.model import LoadedModel, signatures_of
from server.tensors.dtypes import DType, dtype_name
from spec.errors import HarnessError


class ForeignError(HarnessError):
    """The signature cannot be fed from the spec; the message says what it has and what to set."""


def _signatures(version_dir: Path) -> dict:

    graphs = read_meta_graphs(version_dir)
    serve = [g for g in graphs if "serve" in g.meta_info_def.tags] or graphs
    return signatures_of(serve[0]) if serve else {}


def plan_for(spec, version_dir: Path) -> Plan:
    """How to feed the spec's signature (`benchmark.signature`, default serving_default); ForeignError if it
    cannot be fed from the spec."""

    settings = spec.benchmark
    name = settings.signature or "serving_default"
    signatures = _signatures(version_dir)
    where = spec.where("benchmark", "signature")
    signature = signatures.get(name)
    if signature is None:
        usable = sorted(k for k in signatures if not k.startswith("__"))
        raise ForeignError(f"{where}: benchmark.signature: {version_dir} has no signature '{name}'; it has "
                           f"{', '.join(usable) or 'none'}")
    if signature.method_name and not signature.method_name.endswith("predict"):
        raise ForeignError(f"{where}: signature '{name}' is {signature.method_name}, which Predict cannot call; "
                           "choose a predict signature with benchmark.signature")

    def is_image(spec_) -> bool:
        if spec_.dtype == DType.STRING:
            return spec_.shape is None or len(spec_.shape) <= 1
        return spec_.dtype in (DType.FLOAT, DType.UINT8) and spec_.shape is not None and len(spec_.shape) == 4
    images = [a for a, t in signature.inputs.items() if is_image(t) and a not in settings.extra_inputs]
    if len(images) != 1:
        described = ", ".join(f"'{a}' {dtype_name(t.dtype)} {list(t.shape) if t.shape is not None else '?'}"
                              for a, t in signature.inputs.items())
        raise ForeignError(f"{spec.where('benchmark', 'extra_inputs')}: signature '{name}' has inputs {described}; "
                           f"the bench needs exactly one image input (encoded bytes DT_STRING [N], or DT_FLOAT / "
                           f"DT_UINT8 [N, H, W, C]) and every other input in benchmark.extra_inputs (a value, or "
                           f"{' / '.join(DERIVED)}); found {len(images)} image inputs")
    image = images[0]
    tensor = signature.inputs[image]
    kind = "bytes" if tensor.dtype == DType.STRING else ("float" if tensor.dtype == DType.FLOAT else "uint8")
    height, width, channels = spec.model.input.height, spec.model.input.width, spec.model.input.channels
    if kind != "bytes":
        _, h, w, c = tensor.shape
        height, width, channels = (h if h > 0 else height), (w if w > 0 else width), (c if c > 0 else channels)
    extras = []
    for alias, extra in signature.inputs.items():
        if alias == image:
            continue
        if alias not in settings.extra_inputs:
            raise ForeignError(f"{spec.where('benchmark', 'extra_inputs')}: signature '{name}' also takes '{alias}' "
                               f"{dtype_name(extra.dtype)} {list(extra.shape) if extra.shape is not None else '?'}: "
                               f"give it in benchmark.extra_inputs, e.g. {alias}: {DERIVED[0]} or a value")
        extras.append(Extra(alias, extra.dtype, extra.shape, settings.extra_inputs[alias]))
    unknown = sorted(set(settings.extra_inputs) - set(signature.inputs))
    if unknown:
        raise ForeignError(f"{spec.where('benchmark', 'extra_inputs')}: benchmark.extra_inputs names "
                           f"{', '.join(unknown)}, which signature '{name}' does not take (it takes "
                           f"{', '.join(signature.inputs)})")
    batched = all(t.shape is None or (len(t.shape) >= 1 and t.shape[0] == -1) for t in signature.inputs.values())
    return Plan(name, image, kind, int(height), int(width), int(channels), tuple(extras),
                tuple(signature.outputs), batched)


def build(spec, version_dir: Path, plan: Plan, names, sizes, jpegs) -> ForeignPayloadSet:
    """Decode and resize the photos for the plan, and compute the in-process answers (imports TensorFlow)."""
    import tensorflow as tf

    input_spec = spec.model.input.model_copy(update={"height": plan.height, "width": plan.width,
                                                     "channels": plan.channels})
    if plan.image_kind == "float":
        tensors = np.stack([preprocess(decode_one(tf.constant(j), input_spec)[tf.newaxis], input_spec)[0].numpy()
                            for j in jpegs]).astype(np.float32)
    elif plan.image_kind == "uint8":  # the decoded, resized pixels as they are
        tensors = np.stack([np.clip(np.round(decode_one(tf.constant(j), input_spec).numpy()), 0, 255)
                            for j in jpegs]).astype(np.uint8)
    else:
        tensors = np.zeros((0,), np.float32)
    payloads = ForeignPayloadSet(spec.name, list(names), list(sizes), list(jpegs), tensors, {}, plan,
                                 spec.benchmark.batch_size, {"version_dir": str(version_dir)})
    model = LoadedModel.load(version_dir)
    try:
        signature = model.signatures[plan.signature]
        rows: dict[str, list] = {alias: [] for alias in plan.outputs}
        for index in range(len(payloads)):
            answer = model.run(signature, payloads.inputs(index), list(plan.outputs))
            for alias in plan.outputs:
                rows[alias].append(np.asarray(answer[alias]))
    finally:
        model.close()
    payloads.outputs = {alias: np.stack(values) for alias, values in rows.items()}
    return payloads
