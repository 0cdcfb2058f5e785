"""The other model sources: a .keras file, and an existing SavedModel re-exported with image signatures."""
from __future__ import annotations

import numpy as np
import pytest

from server.model import LoadedModel
from spec.loader import load_spec
from exporter.export import export
from exporter.images import bundled_photos, encode

pytestmark = pytest.mark.slow

SPEC = """name: {name}
model:
  source: {source}
  input: {{height: 24, width: 24, channels: 3, preprocessing: {{mode: unit}}}}
export:
  base_path: {base}
  signatures: [serving_default, predict_tensor, classify]
  top_k: 2
"""


def _tiny_keras_model():
    import keras
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])


def _served_top1(version_dir, jpeg):
    model = LoadedModel.load(version_dir)
    try:
        out = model.run(model.signatures["serving_default"], {"image_bytes": np.array([jpeg], object)},
                        ["probabilities"])["probabilities"]
    finally:
        model.close()
    return out


def test_keras_file_source_exports_and_verifies(tmp_path):
    model = _tiny_keras_model()
    model.save(tmp_path / "tiny.keras")
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="tiny", source="{kind: keras_file, path: tiny.keras}", base="models"))
    result = export(load_spec(spec_path), log=lambda _: None)
    assert result.provenance["verification"]["max_abs_diff"]["serving_default"] < 1e-4
    assert _served_top1(result.path, encode(bundled_photos()[1][1], "jpeg")).shape == (1, 3)


def test_saved_model_add_signatures_mode(tmp_path):
    import tensorflow as tf

    model = _tiny_keras_model()
    archive = __import__("keras").export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda x: {"out": model(x)},
                         input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.float32, "x")])
    archive.write_out(str(tmp_path / "plain"), verbose=False)
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="wrapped", base="models",
                                     source="{kind: saved_model, path: plain, mode: add_signatures}"))
    result = export(load_spec(spec_path), log=lambda _: None)
    assert set(result.provenance["verification"]["max_abs_diff"]) == {"serving_default", "predict_tensor", "classify"}
    jpeg = encode(bundled_photos()[0][1], "jpeg")
    pixels = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3)[tf.newaxis], (24, 24)) / 255.0
    np.testing.assert_allclose(_served_top1(result.path, jpeg), model(pixels).numpy(), atol=1e-5)


def test_a_builder_module_beside_the_spec_is_found_without_touching_sys_path(tmp_path):
    import sys

    (tmp_path / "my_builders").mkdir()
    (tmp_path / "my_builders" / "__init__.py").write_text("")
    (tmp_path / "my_builders" / "tiny.py").write_text(
        "import keras\n\n\ndef build(classes=3):\n    keras.utils.set_random_seed(1)\n"
        "    return keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(4, 3),\n"
        "                             keras.layers.GlobalAveragePooling2D(),\n"
        "                             keras.layers.Dense(classes, activation='softmax')])\n")
    spec_path = tmp_path / "beside.yaml"
    spec_path.write_text(SPEC.format(name="beside", base=tmp_path / "models",
                                     source="{kind: builder, function: 'my_builders.tiny:build', args: {classes: 3}}"))
    path_before = list(sys.path)
    result = export(load_spec(spec_path), log=lambda line: None)
    assert sys.path == path_before and str(tmp_path) not in sys.path
    assert "my_builders.tiny:build" in result.provenance["source"]
    model = LoadedModel.load(result.path)
    assert model.signatures["serving_default"].outputs["probabilities"].shape == (-1, 3)
    model.close()


def _keras_file(tmp_path, name: str, layers) -> str:
    import keras
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.GlobalAveragePooling2D(), *layers])
    model.save(tmp_path / f"{name}.keras")
    return model


def test_a_sigmoid_binary_classifier_gives_classify_both_classes(tmp_path):
    """One sigmoid unit (the brightness here): `model.outputs: sigmoid` exports [1 - p, p] under two labels."""
    import keras
    model = _keras_file(tmp_path, "binary", [keras.layers.Dense(1, activation="sigmoid")])
    model.layers[-1].set_weights([np.full((3, 1), 8.0 / 3, np.float32), np.array([-4.0], np.float32)])
    model.save(tmp_path / "binary.keras")
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="binary", source="{kind: keras_file, path: binary.keras}", base="models")
                         .replace("model:\n", "model:\n  outputs: sigmoid\n  labels: [dark, bright]\n", 1))
    result = export(load_spec(spec_path), log=lambda _: None)
    assert result.provenance["num_classes"] == 2
    assert result.provenance["verification"]["max_abs_diff"]["classify"] < 1e-4
    dark, bright = (encode(np.full((24, 24, 3), v, np.uint8), "png") for v in (20, 235))
    from exporter.verify import serialized_examples
    loaded = LoadedModel.load(result.path)
    try:
        out = loaded.run(loaded.signatures["classify"], {"inputs": serialized_examples([dark, bright], "image/encoded")},
                         ["classes", "scores"])
        probabilities = loaded.run(loaded.signatures["serving_default"],
                                   {"image_bytes": np.array([dark, bright], object)}, ["probabilities"])["probabilities"]
    finally:
        loaded.close()
    assert [[c.decode() for c in row] for row in out["classes"]] == [["dark", "bright"], ["bright", "dark"]]
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, atol=1e-6)
    p = 1 / (1 + np.exp(-(8.0 * 235 / 255 - 4)))
    np.testing.assert_allclose(probabilities[1], [1 - p, p], atol=1e-4)


def test_sigmoid_on_a_model_with_several_units_is_one_line(tmp_path):
    from exporter.export import ExportError
    import keras
    _keras_file(tmp_path, "three", [keras.layers.Dense(3, activation="sigmoid")])
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="three", source="{kind: keras_file, path: three.keras}", base="models")
                         .replace("model:\n", "model:\n  outputs: sigmoid\n", 1))
    with pytest.raises(ExportError, match="sigmoid needs a model with one output unit .* this one has 3"):
        export(load_spec(spec_path), log=lambda _: None)


def test_a_logits_model_gets_a_softmax_and_verifies_against_it(tmp_path):
    import keras
    _keras_file(tmp_path, "logits", [keras.layers.Dense(4)])
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="logits", source="{kind: keras_file, path: logits.keras}", base="models")
                         .replace("model:\n", "model:\n  outputs: logits\n", 1))
    result = export(load_spec(spec_path), log=lambda _: None)
    assert max(result.provenance["verification"]["max_abs_diff"].values()) < 1e-4
    answer = _served_top1(result.path, encode(bundled_photos()[2][1], "jpeg"))
    assert answer.shape == (1, 4) and abs(float(answer.sum()) - 1.0) < 1e-5


def _frozen_graph(path) -> np.ndarray:
    """A TF1-style frozen graph: input:0 float [N, 24, 24, 3] -> prob:0, the softmax of mean colours; its weights."""
    import tensorflow as tf
    weights = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 24, 24, 3], name="input")
        tf.nn.softmax(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), tf.constant(weights)) * 5.0, name="prob")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return weights


def test_a_frozen_graph_is_wrapped_with_image_signatures(tmp_path):
    import tensorflow as tf
    weights = _frozen_graph(tmp_path / "frozen.pb")
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="frozen", base="models", source="{kind: frozen_graph, path: frozen.pb, "
                                     "input: input, output: 'prob:0'}"))
    result = export(load_spec(spec_path), log=lambda _: None)
    assert set(result.provenance["verification"]["max_abs_diff"]) == {"serving_default", "predict_tensor", "classify"}
    jpeg = encode(bundled_photos()[0][1], "jpeg")
    pixels = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3)[tf.newaxis], (24, 24)).numpy() / 255.0
    logits = pixels.mean(axis=(1, 2)) @ weights * 5.0
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(_served_top1(result.path, jpeg), want, atol=1e-5)


def test_a_frozen_graph_tensor_that_is_not_there_is_one_line(tmp_path):
    from exporter.sources import SourceError
    _frozen_graph(tmp_path / "frozen.pb")
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(SPEC.format(name="frozen", base="models", source="{kind: frozen_graph, path: frozen.pb, "
                                     "input: 'images:0', output: 'prob:0'}"))
    with pytest.raises(SourceError, match=r"model.source.input: .* has no tensor 'images:0'; its placeholders are "
                                          r"input:0"):
        export(load_spec(spec_path), log=lambda _: None)
