"""spec -> <base_path>/<name>/<version>/ SavedModel, verified, with warmup records and provenance.

The version directory is written under a temporary non-numeric name and renamed into place at the
end, so a server polling the base path never sees a half-written version.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from exporter import images as image_corpus
from exporter.describe import read_meta_graphs
from exporter.preprocess import decode_batch, expected_input
from exporter.signatures import build_functions, head, save
from exporter.sources import load_source
from exporter.verify import verify_copy, verify_image_model
from exporter.warmup import write_warmup
from server.repository import discover_versions
from spec.errors import HarnessError
from spec.schema import SavedModelSource, Spec

PROVENANCE_FILE = Path("assets.extra") / "provenance.json"


class ExportError(HarnessError):
    """The export cannot proceed; one line naming the spec key or path and what to do."""


@dataclass
class ExportResult:
    version: int
    path: Path
    provenance: dict


def existing_versions(model_dir: Path) -> list[int]:
    """Numeric version directories under model_dir, found by the server's own rule."""

    return sorted(discover_versions(str(model_dir)) or ())


def resolve_version(spec: Spec, requested: Union[int, str, None], overwrite: bool) -> int:
    """The version to write: `auto` is one more than the highest present. Refuses to clobber unless asked."""
    requested = spec.export.version if requested is None else requested
    present = existing_versions(spec.model_dir)
    if requested == "auto":
        return (present[-1] + 1) if present else 1
    version = int(requested)
    if version in present and not overwrite:
        raise ExportError(f"{spec.where('export', 'version')}: export.version: version {version} already exists at "
                          f"{spec.model_dir / str(version)}; use version: auto, pass --overwrite, or set "
                          "export.overwrite: true")
    return version


def spec_labels(spec: Spec) -> Optional[list[str]]:
    """The spec's class labels (the list, or the file's non-empty lines), or None when it gives none."""
    labels = spec.model.labels
    if isinstance(labels, Path):
        lines = [line.strip() for line in spec.resolve(labels).read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line]
    return None if labels is None else list(labels)


def read_labels(spec: Spec, num_classes: int) -> list[str]:
    labels = spec_labels(spec)
    if labels is None:
        return [str(i) for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ExportError(f"{spec.where('model', 'labels')}: model.labels: {len(labels)} labels for a model with "
                          f"{num_classes} outputs; give exactly one label per class")
    return list(labels)


def _step(log: Callable[[str], None], started: float, message: str) -> None:
    log(f"[export {time.perf_counter() - started:6.1f}s] {message}")


def export(spec: Spec, version: Union[int, str, None] = None, overwrite: Optional[bool] = None,
           log: Callable[[str], None] = print) -> ExportResult:
    """Export the spec's model, verify it and return where it went. Raises ExportError / VerificationError."""
    overwrite = spec.export.overwrite if overwrite is None else overwrite
    number = resolve_version(spec, version, overwrite)
    target = spec.model_dir / str(number)
    staging = spec.model_dir / f".staging-{number}-{os.getpid()}"
    started = time.perf_counter()
    spec.model_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        source = spec.model.source
        if isinstance(source, SavedModelSource) and source.mode == "as_is":
            details = _export_as_is(spec, staging, log, started)
        else:
            details = _export_image_model(spec, staging, log, started)
        provenance = _provenance(spec, number, details)
        (staging / PROVENANCE_FILE).parent.mkdir(parents=True, exist_ok=True)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _step(log, started, f"wrote {target}")
    return ExportResult(version=number, path=target, provenance=provenance)


def _export_as_is(spec: Spec, staging: Path, log, started: float) -> dict:

    source_dir = spec.resolve(spec.model.source.path)
    _step(log, started, f"copying SavedModel {source_dir}")
    shutil.copytree(source_dir, staging)
    verification = {"enabled": spec.export.verify.enabled}
    if spec.export.verify.enabled:
        _step(log, started, "verifying the copy in a fresh session")
        result = verify_copy(source_dir, staging, skip=PROVENANCE_FILE)
        _step(log, started, f"verified: {result.summary()}")
        verification.update(max_abs_diff=result.max_abs_diff, notes=result.notes)
    return {"source": f"SavedModel {source_dir} (as is)", "verification": verification, "warmup_records": 0,
            "signatures": _signature_names(staging)}


def _export_image_model(spec: Spec, staging: Path, log, started: float) -> dict:
    import numpy as np
    import tensorflow as tf

    _step(log, started, f"building the model ({spec.model.source.kind})")
    source = load_source(spec)
    input_spec = spec.model.input
    probe = tf.zeros([1, input_spec.height, input_spec.width, input_spec.channels], tf.float32)
    units = int(tf.convert_to_tensor(source.call(probe)).shape[-1])
    if spec.model.outputs == "sigmoid" and units != 1:
        raise ExportError(f"{spec.where('model', 'outputs')}: model.outputs: sigmoid needs a model with one output "
                          f"unit (the probability of the second label); this one has {units}: use probabilities or "
                          "logits")
    num_classes = 2 if spec.model.outputs == "sigmoid" else units
    labels = read_labels(spec, num_classes)
    _step(log, started, f"model ready: {source.description}, {num_classes} classes")

    signatures = build_functions(spec, source, labels)
    _step(log, started, f"saving SavedModel with signatures {', '.join(signatures)}")
    save(source, signatures, staging)

    photos = image_corpus.bundled_photos()[:spec.export.verify.images]
    encoded = [image_corpus.encode(image, "jpeg", 90) for _, image in photos]
    warmup = 0
    if spec.export.warmup:
        warmup = write_warmup(staging, spec.name, encoded[:1], spec.export.signatures)
        _step(log, started, f"wrote {warmup} warmup record(s)")
    verification = {"enabled": spec.export.verify.enabled}
    if spec.export.verify.enabled:
        _step(log, started, f"verifying against the source model on {len(encoded)} real photos")

        def preprocess_batch(batch):
            return decode_batch(tf.constant(batch, tf.string), input_spec).numpy()

        def reference(pixels):
            return np.asarray(head(source.call(tf.constant(pixels)), spec.model.outputs))

        result = verify_image_model(staging, reference, preprocess_batch,
                                    encoded, labels, spec.export.signatures, spec.export.verify.tolerance)
        _step(log, started, f"verified: {result.summary()}")
        verification.update(max_abs_diff=result.max_abs_diff, images=[n for n, _ in photos],
                            tolerance=spec.export.verify.tolerance)
    return {"source": source.description, "verification": verification, "warmup_records": warmup,
            "signatures": list(signatures), "num_classes": num_classes, "input": expected_input(input_spec)}


def _signature_names(directory: Path) -> list[str]:

    return sorted(k for mg in read_meta_graphs(directory) for k in mg.signature_def if not k.startswith("__"))


def _provenance(spec: Spec, version: int, details: dict) -> dict:
    import tensorflow as tf

    return {
        "model_name": spec.name,
        "version": version,
        "tensorflow_version": tf.__version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec_file": str(spec.origin) if spec.origin else None,
        "spec_sha256": spec.sha256,
        **details,
    }


def read_provenance(version_dir: Path) -> Optional[dict]:
    """The provenance written beside an exported model, or None for models we did not export."""
    path = Path(version_dir) / PROVENANCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def latest_version_dir(spec: Spec) -> Optional[Path]:
    """The newest exported version directory of the spec's model, or None."""
    present = existing_versions(spec.model_dir)
    return spec.model_dir / str(present[-1]) if present else None


def ensure_exported(spec: Spec, log: Callable[[str], None] = print) -> Path:
    """The spec's newest version directory; exports version `auto` first of every served model (the spec's and
    serving.also_serve's) that has none."""
    for served in reversed(spec.served):  # the spec's own model last, so its export is the last thing logged
        if latest_version_dir(served) is None:
            log(f"no exported version under {served.model_dir}: exporting {served.name} first")
            export(served, version="auto", log=log)
    return latest_version_dir(spec)
