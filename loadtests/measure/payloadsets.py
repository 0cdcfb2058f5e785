"""Building the benchmark's PayloadSet (drive/payloads.py) for a spec and a model version: the images chosen and
encoded, the signatures checked before anything is deployed, the in-process answers computed with TensorFlow,
and the set cached by content under <output_dir>/<model>/.payloads/."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from exporter.describe import read_meta_graphs
from exporter.images import encode, load_photos, resize
from exporter.preprocess import decode_batch
from loadtests.drive.foreign import IMAGE_PAYLOADS
from loadtests.measure import foreignplan
from loadtests.drive.payloads import FORMAT, PAYLOADS, SIGNATURE_FOR, PayloadError, PayloadSet
from server.model import LoadedModel, signatures_of
from server.tensors.dtypes import DType, dtype_name
from spec.contract import DEFAULT_PAYLOADS, IMAGE_INPUT, IMAGE_SIGNATURE, OUTPUT, TENSOR_INPUT, TENSOR_SIGNATURE


def _images(spec) -> tuple[list[str], list[tuple[int, int]], list[bytes]]:

    images = spec.benchmark.images
    photos = load_photos(spec.resolve(images.directory) if images.directory else None)
    order = np.random.default_rng(images.seed).permutation(len(photos))
    names, sizes, jpegs = [], [], []
    for width, height in images.resolutions:
        for k in range(images.count):
            name, pixels = photos[order[k % len(photos)]]
            names.append(f"{name}@{width}x{height}")
            sizes.append((width, height))
            jpegs.append(encode(resize(pixels, width, height), "jpeg", images.jpeg_quality))
    return names, sizes, jpegs


def _model_sha256(version_dir: Path) -> str:
    binary = version_dir / "saved_model.pb"
    return hashlib.sha256((binary if binary.is_file() else version_dir / "saved_model.pbtxt").read_bytes()).hexdigest()


def cache_path(spec, version_dir: Path) -> Path:
    """Where the payloads for this spec's images and this exported version are cached."""
    key = hashlib.sha256()
    key.update(_model_sha256(version_dir).encode())
    key.update(spec.benchmark.images.model_dump_json().encode())
    key.update(spec.model.input.model_dump_json().encode())
    key.update(f"{spec.name}/{FORMAT}/{spec.benchmark.batch_size}/{spec.benchmark.signature}/".encode())
    key.update(json.dumps(spec.benchmark.extra_inputs, sort_keys=True).encode())
    return spec.resolve(spec.benchmark.output_dir) / spec.name / ".payloads" / f"{key.hexdigest()[:16]}.npz"


def _describe_inputs(signature) -> str:

    def shape(spec) -> str:
        return "unknown rank" if spec.shape is None else "[" + ", ".join(str(d) for d in spec.shape) + "]"
    inputs = ", ".join(f"'{a}' {dtype_name(t.dtype)} {shape(t)}" for a, t in signature.inputs.items()) or "none"
    outputs = ", ".join(f"'{a}'" for a in signature.outputs) or "none"
    return f"inputs {inputs}; outputs {outputs}"


def check_signatures(spec, version_dir: Path, payload_names: Sequence[str]) -> None:
    """Before anything is deployed: can every payload feed the exported model, and can its answers be checked?

    Reads saved_model.pb only (no session). Raises PayloadError (exit 2) naming the signature, what it has,
    and what to put in the spec.
    """

    foreign_only = [p for p in payload_names if p not in SIGNATURE_FOR]
    if foreign_only:
        raise PayloadError(f"{spec.where('benchmark', 'payloads')}: benchmark.payloads: {', '.join(foreign_only)} "
                           f"feeds a SavedModel's own uint8 image input; {version_dir} has this harness's "
                           f"signatures: use {', '.join(SIGNATURE_FOR)}")
    graphs = [g for g in read_meta_graphs(version_dir) if "serve" in g.meta_info_def.tags] or \
        read_meta_graphs(version_dir)
    signatures = signatures_of(graphs[0]) if graphs else {}
    as_is = getattr(spec.model.source, "mode", None) == "as_is"
    if as_is:
        fix = (f"this SavedModel is served as is ({spec.where('model', 'source', 'mode')}), and the bench can only "
               f"feed {IMAGE_SIGNATURE}(image_bytes DT_STRING [N] -> {OUTPUT}) and {TENSOR_SIGNATURE}(images "
               f"DT_FLOAT [N, H, W, C] -> {OUTPUT}), the signatures this harness exports: set model.source.mode: "
               "add_signatures and model.source.signature: <its image signature> to wrap a float image signature "
               "with one output in them")
    else:
        fix = (f"export with {spec.where('export', 'signatures')} including it, or drop the payload from "
               f"{spec.where('benchmark', 'payloads')}")
    needed = {SIGNATURE_FOR[p]: f"payload {p}" for p in payload_names}
    needed.setdefault(IMAGE_SIGNATURE, "the correctness check (it computes the in-process answers from JPEGs)")
    shape = (spec.model.input.height, spec.model.input.width, spec.model.input.channels)
    for name, user in needed.items():
        signature = signatures.get(name)
        if signature is None:
            raise PayloadError(f"{version_dir} has no signature '{name}', which {user} needs (it has "
                               f"{', '.join(sorted(signatures)) or 'none'}); {fix}")
        want_input, want_type = (IMAGE_INPUT, DType.STRING) if name == IMAGE_SIGNATURE else (TENSOR_INPUT, DType.FLOAT)
        tensor = signature.inputs.get(want_input)
        problem = None
        if set(signature.inputs) != {want_input} or tensor is None or tensor.dtype != want_type:
            problem = f"it must have exactly one input '{want_input}' of {'DT_STRING' if want_type == DType.STRING else 'DT_FLOAT'}"
        elif OUTPUT not in signature.outputs:
            problem = f"it has no output '{OUTPUT}'"
        elif name == TENSOR_SIGNATURE and tensor.shape is not None and len(tensor.shape) == 4 and any(
                d not in (-1, want) for d, want in zip(tensor.shape[1:], shape)):
            problem = (f"its input is {list(tensor.shape)} but {spec.where('model', 'input')} says "
                       f"{spec.model.input.height}x{spec.model.input.width}x{spec.model.input.channels}: set "
                       "model.input.height, width and channels to the model's")
        if problem:
            raise PayloadError(f"{version_dir}: signature '{name}' ({_describe_inputs(signature)}) cannot take "
                               f"{user}: {problem}; {fix}")


def payload_plan(spec, version_dir: Path, payload_names: Sequence[str]):
    """(None, payloads) for a model with this harness's signatures; (a foreign.Plan, payloads) for a SavedModel
    served as is through a signature of its own. Raises PayloadError / ForeignError (exit 2) before any deployment.

    For a signature of its own, the default payloads become those of the defaults that fit its image input (or the
    one that does); payloads the spec names must each fit.
    """

    as_is = getattr(spec.model.source, "mode", None) == "as_is"
    if spec.benchmark.signature is None:
        try:
            check_signatures(spec, version_dir, payload_names)
            return None, list(payload_names)
        except PayloadError:
            if not as_is:
                raise
    plan = foreignplan.plan_for(spec, version_dir)
    fits = IMAGE_PAYLOADS[plan.image_kind]
    if tuple(payload_names) == DEFAULT_PAYLOADS:
        return plan, [p for p in payload_names if p in fits] or [fits[0]]
    wrong = [p for p in payload_names if p not in fits]
    if wrong:
        raise PayloadError(f"{spec.where('benchmark', 'payloads')}: benchmark.payloads: {', '.join(wrong)} cannot "
                           f"feed signature '{plan.signature}' of {version_dir} (its image input "
                           f"'{plan.image_input}' is {plan.image_kind}); use {', '.join(fits)}")
    return plan, list(payload_names)


def build(spec, version_dir: Path, payload_names: Sequence[str], plan=None):
    """Encode the spec's images and compute the model's in-process answers (imports TensorFlow)."""
    import tensorflow as tf

    if plan is not None:

        names, sizes, jpegs = _images(spec)
        payloads = foreignplan.build(spec, version_dir, plan, names, sizes, jpegs)
        payloads.source["saved_model_sha256"] = _model_sha256(version_dir)
        return payloads
    check_signatures(spec, version_dir, payload_names)
    model = LoadedModel.load(version_dir)
    try:
        names, sizes, jpegs = _images(spec)
        tensors = np.concatenate([decode_batch(tf.constant([j]), spec.model.input).numpy() for j in jpegs])
        signature = model.signatures[IMAGE_SIGNATURE]
        expected = np.concatenate([model.run(signature, {IMAGE_INPUT: np.array([j], dtype=object)}, [OUTPUT])[OUTPUT]
                                   for j in jpegs]).astype(np.float32)
    finally:
        model.close()
    source = {"version_dir": str(version_dir),
              "saved_model_sha256": _model_sha256(version_dir)}
    return PayloadSet(spec.name, names, sizes, jpegs, tensors.astype(np.float32), expected, source,
                      spec.benchmark.batch_size)


def load_or_build(spec, version_dir: Path, payload_names: Sequence[str] = PAYLOADS,
                  log=print, plan=None) -> tuple[PayloadSet, Path]:
    """The cached PayloadSet for this spec and version, building (and caching) it when absent."""
    path = cache_path(spec, version_dir)
    if path.exists():
        return PayloadSet.load(path), path
    log(f"encoding {spec.benchmark.images.count * len(spec.benchmark.images.resolutions)} images and computing "
        f"in-process answers with {version_dir}")
    payloads = build(spec, version_dir, payload_names, plan)
    payloads.save(path)
    return payloads, path
