"""The exporter end to end: real models exported, reloaded in a fresh session, checked on real data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from server.model import LoadedModel
from spec.loader import load_spec
from exporter.builtin_models import digits_uint8
from exporter.export import PROVENANCE_FILE, ExportError, export, read_provenance
from exporter.images import encode
from exporter.verify import serialized_examples
from exporter.warmup import WARMUP_FILE
from tests.conftest import export_log, export_spec, run_cli, write_spec

pytestmark = pytest.mark.slow


def test_digits_serving_default_classifies_png_bytes_accurately(digits_export):
    _, version_dir = digits_export
    _, _, test_x, test_y = digits_uint8(seed=0)
    pngs = np.array([encode(image[..., np.newaxis], "png") for image in test_x], dtype=object)
    model = LoadedModel.load(version_dir)
    try:
        probabilities = model.run(model.signatures["serving_default"], {"image_bytes": pngs},
                                  ["probabilities"])["probabilities"]
        classify = model.run(model.signatures["classify"], {"inputs": serialized_examples(pngs[:50], "image/encoded")},
                             ["classes", "scores"])
    finally:
        model.close()
    accuracy = float(np.mean(probabilities.argmax(axis=1) == test_y))
    print(f"digits accuracy on {len(test_y)} held-out PNGs: {accuracy:.4f}")
    assert accuracy >= 0.95
    top1 = [int(c.decode()) for c in classify["classes"][:, 0]]
    assert top1 == list(probabilities[:50].argmax(axis=1))
    assert classify["scores"].shape == (50, 3)


def test_digits_export_layout_signatures_warmup_and_provenance(digits_export):
    spec_path, version_dir = digits_export
    assert version_dir.name == "1" and (version_dir / "saved_model.pb").is_file()
    model = LoadedModel.load(version_dir)
    sigs = model.signatures
    model.close()
    assert sigs["serving_default"].inputs["image_bytes"].dtype == 7  # DT_STRING: REST takes {"b64": ...}
    assert sigs["predict_tensor"].inputs["images"].shape == (-1, 32, 32, 1)
    assert sigs["classify"].method_name == "tensorflow/serving/classify"
    assert set(sigs["classify"].outputs) == {"classes", "scores"}
    assert (version_dir / WARMUP_FILE).stat().st_size > 0
    provenance = read_provenance(version_dir)
    assert provenance["model_name"] == "digits_cnn" and provenance["version"] == 1
    made_from = export_spec(version_dir)  # the session's spec differs only in export.base_path
    assert provenance["spec_file"] == str(made_from) and provenance["spec_sha256"] == load_spec(made_from).sha256
    assert load_spec(spec_path).model == load_spec(made_from).model
    assert provenance["tensorflow_version"].startswith("2.")
    assert provenance["verification"]["max_abs_diff"]["serving_default"] < 1e-4


def test_warmup_records_are_prediction_logs(digits_export):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    _, version_dir = digits_export
    records = list(tf.data.TFRecordDataset(str(version_dir / WARMUP_FILE)).as_numpy_iterator())
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.predict_log.request.model_spec.signature_name == "serving_default"
    assert log.predict_log.request.inputs["image_bytes"].string_val[0][:2] == b"\xff\xd8"  # a JPEG


def test_version_auto_increments_and_existing_versions_are_kept(digits_export, tmp_path):
    spec_path, version_dir = digits_export
    spec = load_spec(spec_path)
    with pytest.raises(ExportError, match="version 1 already exists"):
        export(spec, version=1, log=lambda _: None)
    assert (version_dir / "saved_model.pb").is_file()
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".staging")]


def test_inspect_cli_prints_signatures_and_hints(digits_export):
    _, version_dir = digits_export
    result = run_cli("-m", "exporter", "inspect", str(version_dir), timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "signature_def['serving_default']:" in out and "inputs['image_bytes'] tensor_info:" in out
    assert "dtype: DT_STRING" in out and "Method name is: tensorflow/serving/classify" in out
    assert 'send encoded bytes: REST {"instances": [{"b64"' in out  # the default signature needs no name
    assert 'send DT_FLOAT images N x 32 x 32 x 1: REST {"signature_name": "predict_tensor", "instances"' in out
    assert 'model_spec.signature_name = "predict_tensor"' in out
    # classify's tf.Example feature, read from the graph's ParseExample op
    assert '"examples": [{"image/encoded": {"b64": "<base64 JPEG>"}}]' in out
    # what the export expects of its tensor input (digits: unit preprocessing), from its provenance
    assert ("The tensor signature expects float32 N x 32 x 32 x 1: pixels (0..255) resized (bilinear), then "
            "x / 255, so values in [0, 1]") in out
    provenance = json.loads((version_dir / PROVENANCE_FILE).read_text())
    assert provenance["input"]["value_range"] == [0.0, 1.0] and provenance["input"]["formula"] == "x / 255"


def test_inspect_reads_a_text_saved_model(testdata, tmp_path):
    """TF1-era exports may write saved_model.pbtxt; inspect reads it as TF's loader does."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((testdata / "saved_model_half_plus_two_cpu" / "00000123" / "saved_model.pb").read_bytes())
    (tmp_path / "saved_model.pbtxt").write_text(text_format.MessageToString(saved))
    result = run_cli("-m", "exporter", "inspect", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "signature_def['serving_default']:" in result.stdout and "inputs['x'] tensor_info:" in result.stdout
    assert "signature_def['classify_x_to_y']:" in result.stdout and "feature(s) x" in result.stdout


def test_existing_saved_model_becomes_a_servable_version(testdata, tmp_path):
    source = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    spec_path = write_spec(tmp_path, "specs/half_plus_two.yaml", **{
        "export.base_path": str(tmp_path / "models"), "model.source.path": str(source)})
    result = run_cli("-m", "exporter", "--spec", str(spec_path), timeout=300)
    assert result.returncode == 0, result.stderr
    version_dir = tmp_path / "models" / "half_plus_two" / "1"
    assert (version_dir / "saved_model.pb").read_bytes() == (source / "saved_model.pb").read_bytes()
    assert "files byte-identical to the source" in result.stdout
    provenance = json.loads((version_dir / PROVENANCE_FILE).read_text())
    assert provenance["verification"]["max_abs_diff"]["serving_default"] == 0.0
    model = LoadedModel.load(version_dir)
    y = model.run(model.signatures["serving_default"], {"x": np.array([[1.0], [2.0], [5.0]], np.float32)}, ["y"])["y"]
    model.close()
    assert y.ravel().tolist() == [2.5, 3.0, 4.5]


def test_mobilenet_v2_spec_exports_and_passes_verification(default_export):
    """The default spec through the exporter's command: the shared export (cached_export runs the command, once per
    content of the spec and of the exporter's code, so a change to either runs it again here)."""
    log = export_log(default_export)
    assert "verified: serving_default: max |diff|" in log and f"wrote {default_export}" in log, log[-2000:]
    assert (default_export / "saved_model.pb").is_file() and default_export.parent.name == "mobilenet_v2"
    verification = read_provenance(default_export)["verification"]
    assert verification["enabled"] and len(verification["images"]) == 4, verification
    assert set(verification["max_abs_diff"]) == {"serving_default", "predict_tensor", "classify"}
    assert all(diff <= verification["tolerance"] for diff in verification["max_abs_diff"].values()), verification


def test_offline_imagenet_weights_fail_with_a_clear_message(tmp_path):
    spec_path = write_spec(tmp_path, "specs/mobilenet_v2.yaml", **{"export.base_path": str(tmp_path / "models"),
                                                                      "model.source.weights": "imagenet"})
    result = run_cli("-m", "exporter", "--spec", str(spec_path), timeout=600)
    if result.returncode == 0:
        pytest.skip("this machine reached the internet and downloaded the weights")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "model.source.weights: null" in result.stderr.strip().splitlines()[-1]
