"""Spec files fuzzed: broken YAML and wrong values always give SpecError lines naming file:line, never another
exception (which would reach the user as a traceback)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec.errors import SpecError
from spec.loader import load_spec
from tests.conftest import REPO

BASE = yaml.safe_load((REPO / "specs" / "digits_cnn.yaml").read_text())
KEYS = ["name", "model", "model.source", "model.source.kind", "model.source.function", "model.source.args",
        "model.input", "model.input.height", "model.input.channels", "model.input.preprocessing.mode", "model.labels",
        "export", "export.base_path", "export.version", "export.top_k", "export.signatures", "serving",
        "serving.grpc_port", "serving.rest_port", "serving.host", "serving.batching", "serving.batching.enabled",
        "serving.batching.max_batch_size", "serving.batching.allowed_batch_sizes", "serving.also_serve",
        "serving.image", "serving.kubernetes.replicas", "benchmark", "benchmark.users", "benchmark.duration",
        "benchmark.warmup", "benchmark.payloads", "benchmark.images.resolutions", "benchmark.failure_threshold",
        "unknown_key", "serving.unknown"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)
LINE = re.compile(r"^(?P<file>.+\.yaml):(?P<line>\d+): \S")


def _check(path: Path) -> None:
    try:
        load_spec(path)
    except SpecError as exc:
        message = str(exc)
        assert message and "Traceback" not in message
        first = LINE.match(message.splitlines()[0])
        assert first and first["file"] == str(path), message


def _mutated(changes: list[tuple[str, object]]) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes:
        node, keys = data, dotted.split(".")
        for key in keys[:-1]:
            child = node.get(key) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                child = node[key] = {} if isinstance(node, dict) else None
            if child is None:
                break
            node = child
        else:
            node[keys[-1]] = value
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_wrong_values_are_one_clear_line_each(changes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(_mutated(changes), sort_keys=False))
        _check(path)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_broken_yaml_is_one_clear_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        _check(path)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len((REPO / "specs" / "digits_cnn.yaml").read_text())), st.sampled_from(["", ":", "- ", "\t",
                                                                                               "{", "'", "&a *b"]))
def test_a_damaged_real_spec_is_one_clear_line(cut, junk):
    text = (REPO / "specs" / "digits_cnn.yaml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text[:cut] + junk + text[cut:])
        _check(path)
