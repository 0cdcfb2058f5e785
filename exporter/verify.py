"""Verify an export: reload it in a fresh graph and session (as the server will) and compare with the source."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from server.errors import ServingError
from server.model import LoadedModel
from spec import contract as c
from spec.errors import MISMATCH, HarnessError


class VerificationError(HarnessError):
    """The exported model does not reproduce the source model."""
    exit_code = MISMATCH
    prefix = "verification failed: "


@dataclass
class Verification:
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{name}: max |diff| {value:.3g}" for name, value in self.max_abs_diff.items()]
        return "; ".join(parts + self.notes)


def _check(name: str, diff: float, tolerance: float, result: Verification) -> None:
    result.max_abs_diff[name] = diff
    if not np.isfinite(diff) or diff > tolerance:
        raise VerificationError(f"signature {name}: outputs differ from the source model by {diff:.3g} "
                                f"(tolerance {tolerance:g}); the export is not faithful")


def serialized_examples(encoded: Sequence[bytes], feature: str) -> np.ndarray:
    """tf.Example protos holding each image's bytes in `feature`, serialized."""
    import tensorflow as tf

    examples = [tf.train.Example(features=tf.train.Features(feature={
        feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))})).SerializeToString()
        for data in encoded]
    return np.array(examples, dtype=object)


def verify_image_model(version_dir: Path, reference: Callable[[np.ndarray], np.ndarray],
                       preprocess_batch: Callable[[Sequence[bytes]], np.ndarray], encoded: Sequence[bytes],
                       labels: Sequence[str], signatures: Sequence[str], tolerance: float) -> Verification:
    """Run each exported signature in a fresh session and compare with `reference(preprocessed images)`."""

    pixels = preprocess_batch(encoded)
    expected = np.asarray(reference(pixels), dtype=np.float32)
    result = Verification()
    loaded = LoadedModel.load(version_dir)
    try:
        sigs = loaded.signatures
        if c.IMAGE_SIGNATURE in signatures:
            got = loaded.run(sigs[c.IMAGE_SIGNATURE], {c.IMAGE_INPUT: np.array(encoded, dtype=object)},
                             [c.OUTPUT])[c.OUTPUT]
            _check(c.IMAGE_SIGNATURE, float(np.max(np.abs(got - expected))), tolerance, result)
        if c.TENSOR_SIGNATURE in signatures:
            got = loaded.run(sigs[c.TENSOR_SIGNATURE], {c.TENSOR_INPUT: pixels}, [c.OUTPUT])[c.OUTPUT]
            _check(c.TENSOR_SIGNATURE, float(np.max(np.abs(got - expected))), tolerance, result)
        if c.CLASSIFY_SIGNATURE in signatures:
            classes_name, scores_name = c.CLASSIFY_OUTPUTS
            out = loaded.run(sigs[c.CLASSIFY_SIGNATURE],
                             {c.CLASSIFY_INPUT: serialized_examples(encoded, c.IMAGE_FEATURE)},
                             [classes_name, scores_name])
            k = out[scores_name].shape[1]
            top = np.argsort(-expected, axis=1, kind="stable")[:, :k]
            expected_scores = np.take_along_axis(expected, top, axis=1)
            _check(c.CLASSIFY_SIGNATURE, float(np.max(np.abs(out[scores_name] - expected_scores))), tolerance,
                   result)
            got_top1 = [label.decode() for label in out[classes_name][:, 0]]
            # ties at top-1 may legitimately order differently; compare labels only where the top-1 is clear
            for row, label in enumerate(got_top1):
                clear = k == 1 or expected_scores[row, 0] - expected_scores[row, 1] > tolerance
                if clear and label != labels[top[row, 0]]:
                    raise VerificationError(f"signature classify: image {row} top-1 class {label!r}, "
                                            f"source model says {labels[top[row, 0]]!r}")
    finally:
        loaded.close()
    return result


def tree_digest(directory: Path, skip: Optional[Path] = None) -> str:
    """sha256 over every file's relative path and bytes, to prove a copy is exact."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        relative = path.relative_to(directory)
        if skip is not None and relative.parts[:len(skip.parts)] == skip.parts:
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def verify_copy(source_dir: Path, version_dir: Path, skip: Path) -> Verification:
    """An as-is SavedModel: byte-identical files, it loads in a fresh session, and float signatures agree."""

    if tree_digest(source_dir, skip=skip) != tree_digest(version_dir, skip=skip):  # its provenance is ours
        raise VerificationError(f"the files in {version_dir} differ from {source_dir}")

    result = Verification(notes=["files byte-identical to the source"])
    try:
        copy, original = LoadedModel.load(version_dir), LoadedModel.load(source_dir)
    except ServingError as error:
        raise VerificationError(f"{source_dir} does not load in a TF1 session, as TF Serving and this server load "
                                f"a SavedModel: {error.message.splitlines()[0]}") from None
    try:
        return _compare_copy(copy, original, result)
    except ServingError as error:
        raise VerificationError(
            f"{source_dir} loads, but running it in a TF1 session (as TF Serving and this server do) fails: "
            f"{error.message.splitlines()[0]}" + (
                "; a Keras 3 model saved with tf.saved_model.save does this: save it with model.export(path) "
                "instead, or use model.source.kind: keras_file" if "Could not find variable" in error.message
                else "")) from None
    finally:
        copy.close()
        original.close()


def _compare_copy(copy, original, result: Verification) -> Verification:
    """Float-input signatures of the copy and the original give identical answers on a probe."""
    for name, sig in sorted(copy.signatures.items()):
        if name.startswith("__") or not sig.inputs or any(i.dtype != 1 for i in sig.inputs.values()):
            continue  # only float-input signatures can be probed without knowing the data
        probe = {alias: np.full([2 if d == -1 else d for d in (spec.shape or (2, 1))], 1.5, np.float32)
                 for alias, spec in sig.inputs.items()}
        a = copy.run(sig, probe, list(sig.outputs))
        b = original.run(original.signatures[name], probe, list(sig.outputs))
        _check(name, max(float(np.max(np.abs(a[k] - b[k]))) for k in a), 0.0, result)
    return result
