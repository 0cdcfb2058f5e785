"""The spec loader: examples load, every kind of bad spec gives one clear `file:line: key: problem` line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from spec.errors import SpecError, UsageError
from spec.jsonschema import render
from spec.loader import load_spec
from spec.units import parse_duration
from tests.conftest import REPO, run_cli


@pytest.mark.parametrize("name", ["mobilenet_v2", "digits_cnn"])
def test_example_specs_load_with_defaults_filled(name):
    spec = load_spec(REPO / "specs" / f"{name}.yaml")
    assert spec.name == name
    assert spec.serving.host == "127.0.0.1"
    assert spec.export.signatures == ("serving_default", "predict_tensor", "classify")
    assert spec.model_dir == REPO / "models" / name
    assert len(spec.sha256) == 64


def test_saved_model_example_spec_loads(testdata):
    spec = load_spec(REPO / "specs" / "half_plus_two.yaml")
    assert spec.resolve(spec.model.source.path) == (testdata / "saved_model_half_plus_two_cpu" / "00000123").resolve()


def test_a_spec_can_list_more_models_for_its_server(testdata):
    spec = load_spec(REPO / "specs" / "digits_and_half_plus_two.yaml")
    assert [served.name for served in spec.served] == ["digits_cnn", "half_plus_two"]
    assert spec.served[1].model_dir == REPO / "models" / "half_plus_two"
    assert load_spec(REPO / "specs" / "digits_cnn.yaml").served[0].name == "digits_cnn"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("also, other, message", [
    ("[nowhere.yaml]", None, r"serving.also_serve\[0\]: spec file .*nowhere.yaml does not exist"),
    ("[other.yaml]", "name: a\nmodel: {source: {kind: keras_application, application: MobileNetV2}}\n",
     "names its model 'a', which this server already serves"),
    ("[other.yaml]", "name: b\nmodel: {source: {kind: keras_application, application: MobileNetV2}}\n"
                     "serving: {also_serve: [main.yaml]}\n", "cannot list models itself"),
    ("[other.yaml]", "name: b\nmodel: {source: {kind: nope}}\n", "other.yaml is not a valid spec: .*other.yaml:2"),
])
def test_also_serve_problems_name_the_line(tmp_path, also, other, message):
    main = _write(tmp_path / "main.yaml", "name: a\nmodel: {source: {kind: keras_application, "
                  "application: MobileNetV2}}\nserving:\n  also_serve: " + also + "\n")
    if other:
        _write(tmp_path / "other.yaml", other)
    with pytest.raises(SpecError, match=message) as raised:
        load_spec(main)
    assert str(raised.value).startswith(f"{main}:4:")


def test_spec_is_frozen():
    spec = load_spec(REPO / "specs" / "digits_cnn.yaml")
    with pytest.raises(Exception):
        spec.name = "other"


BAD_SPECS = {
    "unknown_key": ("name: m\nmodel:\n  source:\n    kind: keras_application\n    application: MobileNetV2\n"
                    "    wieghts: null\n", ":6: model.source.wieghts: unknown key 'wieghts'; allowed keys: application"),
    "unknown_top_key": ("name: m\nmodel:\n  source: {kind: builder, function: 'a.b:c'}\nexprt: {}\n",
                        ":4: exprt: unknown key 'exprt'; allowed keys: benchmark, export, lifecycle, model, name, serving"),
    "wrong_type": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nserving:\n  grpc_port: abc\n",
                   ":5: serving.grpc_port: Input should be a valid integer"),
    "negative_port": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nserving:\n  rest_port: -1\n",
                      ":5: serving.rest_port: Input should be greater than or equal to 1"),
    "same_ports": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nserving:\n  grpc_port: 9000\n"
                   "  rest_port: 9000\n", ":4: serving: grpc_port and rest_port must differ"),
    "empty_users": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nbenchmark:\n  users: []\n",
                    ":5: benchmark.users: the list cannot be empty"),
    "bad_duration": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nbenchmark:\n  duration: soon\n",
                     ":5: benchmark.duration: 'soon' is not a duration"),
    "missing_model_file": ("name: m\nmodel:\n  source:\n    kind: keras_file\n    path: nothere.keras\n",
                           ":5: model.source.path: model file"),
    "missing_saved_model": ("name: m\nmodel:\n  source:\n    kind: saved_model\n    path: /nonexistent/sm\n",
                            ":5: model.source.path: /nonexistent/sm holds no saved_model.pb"),
    "unknown_kind": ("name: m\nmodel:\n  source:\n    kind: onnx\n",
                     ":4: model.source: kind 'onnx' is not a model source; allowed kinds: keras_application"),
    "missing_key": ("name: m\n", ":1: model: required key is missing"),
    "bad_yaml": ("name: m\nmodel: [\n  x\n", ":4: YAML does not parse"),
    "duplicate_key": ("name: m\nname: n\n", ":2: duplicate key 'name' (first defined on line 1)"),
    "not_a_mapping": ("- a\n- b\n", ":1: a spec is a YAML mapping"),
    "mean_std_without_values": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\n  input:\n"
                                "    preprocessing: {mode: mean_std}\n",
                                ":5: model.input.preprocessing: mode mean_std needs both 'mean' and 'std'"),
    "allowed_batch_sizes": ("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nserving:\n  batching:\n"
                            "    max_batch_size: 8\n    allowed_batch_sizes: [2, 4]\n",
                            ":5: serving.batching: the last allowed_batch_sizes entry (4) must equal max_batch_size"),
    "bad_name": ("name: 'my model!'\nmodel:\n  source: {kind: builder, function: 'a:b'}\n",
                 ":1: name: use letters, digits"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_gives_one_line_with_file_line_and_key(tmp_path, case):
    text, expected = BAD_SPECS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    message = str(raised.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert len(message.splitlines()) == 1, message


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_the_spec_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.txt").write_text("a\nb\n")
    path = tmp_path / "sub" / "s.yaml"
    path.write_text("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\n  labels: labels.txt\n"
                    "export:\n  base_path: out\n")
    spec = load_spec(path)
    assert spec.resolve(spec.model.labels) == tmp_path / "sub" / "labels.txt"
    assert spec.model_dir == tmp_path / "sub" / "out" / "m"
    assert spec.where("export", "base_path") == f"{path}:6"


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("2m", 120), ("500ms", 0.5), (7, 7), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_committed_json_schema_is_current():
    committed = (REPO / "specs" / "spec.schema.json").read_text()
    assert committed == render(), "specs/spec.schema.json is stale: run `make schema`"
    schema = json.loads(committed)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "model"}


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "missing_model_file", "bad_yaml"])
def test_exporter_cli_reports_bad_spec_without_traceback(tmp_path, case):
    text, expected = BAD_SPECS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    result = run_cli("-m", "exporter", "--spec", str(path), timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_exporter_cli_refuses_to_overwrite_an_existing_version(tmp_path):
    (tmp_path / "models" / "m" / "3").mkdir(parents=True)
    path = tmp_path / "s.yaml"
    path.write_text("name: m\nmodel:\n  source: {kind: builder, function: 'a:b'}\nexport:\n  base_path: models\n"
                    "  version: 3\n")
    result = run_cli("-m", "exporter", "--spec", str(path), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path}:6: export.version: version 3 already exists" in result.stderr
    assert (tmp_path / "models" / "m" / "3").is_dir() and not any((tmp_path / "models" / "m" / "3").iterdir())


def test_exporter_cli_rejects_bad_version_flag(tmp_path):
    result = run_cli("-m", "exporter", "--spec", str(REPO / "specs" / "digits_cnn.yaml"), "--version", "x", timeout=60)
    assert result.returncode == 2 and "--version 'x'" in result.stderr and "Traceback" not in result.stderr


def test_inspect_cli_on_a_directory_without_a_model(tmp_path):
    (tmp_path / "7").mkdir()
    result = run_cli("-m", "exporter", "inspect", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "no saved_model.pb here; it has version directories: try" in result.stderr
    assert "Traceback" not in result.stderr


def test_max_duration_and_slo_confidence_are_checked_where_they_are_written(tmp_path):
    from tests.conftest import write_spec
    spec = load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **{"benchmark.duration": "10s"}))
    assert spec.benchmark.max_duration is None and spec.benchmark.longest == 30.0  # 3 x duration by default
    spec = load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **{"benchmark.max_duration": "1m",
                                                                      "benchmark.slo_confidence": 0.95}))
    assert spec.benchmark.longest == 60.0 and spec.benchmark.slo_confidence == 0.95
    for key, value, message in (("benchmark.max_duration", "5s", "max_duration .* is shorter than duration"),
                                ("benchmark.slo_confidence", 1.5, "slo_confidence")):
        path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{"benchmark.duration": "10s", key: value})
        with pytest.raises(SpecError, match=message) as raised:
            load_spec(path)
        assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_a_max_duration_override_shorter_than_duration_is_one_line(tmp_path):
    from loadtests.measure.session import Overrides, apply_overrides
    from tests.conftest import write_spec
    spec = load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **{"benchmark.duration": "10s"}))
    with pytest.raises(UsageError, match=r"command-line override: .*max_duration \(5 s\) is shorter than duration"):
        apply_overrides(spec, Overrides(max_duration="5s"))  # a rule between keys has no location (was IndexError)
