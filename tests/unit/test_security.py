"""Security properties that hold by construction, checked over the whole repository: YAML is only ever
safe-loaded (a spec cannot run code), and images carry no secrets (build args and ENV are a fixed, harmless set;
the build context holds only the model, its configs and our sources)."""
from __future__ import annotations

import ast
import re

import pytest

from spec.errors import SpecError
from spec.loader import load_spec
from tests.conftest import REPO

SOURCES = [path for top in ("spec", "exporter", "server", "deploy", "loadtests", "demo", "benchmarks", "tests", "models")
           if (REPO / top).is_dir() for path in sorted((REPO / top).rglob("*.py"))]
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "FullLoader", "UnsafeLoader", "UnsafeConstructor", "FullConstructor"}
# every ARG and ENV a Dockerfile may declare: versions, names, hashes, paths and compiler flags, nothing secret
ALLOWED_BUILD_NAMES = {"TF_SERVING_VERSION", "TF_SERVING_BASE", "TF_SERVING_BUILD_OPTIONS", "PYTHON_BASE", "MODEL", "MODEL_VERSIONS",
                       "SPEC_SHA256", "SOURCE", "MODEL_NAME", "MODEL_BASE_PATH", "NVIDIA_VISIBLE_DEVICES",
                       "NVIDIA_DRIVER_CAPABILITIES", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK",
                       "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL",
                       "DEBIAN_FRONTEND", "PATH", "LANG"}


def test_the_repository_has_python_sources_to_scan():
    assert len(SOURCES) > 40 and REPO / "spec" / "yamlsource.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_is_only_ever_safe_loaded(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml":
            assert node.attr not in UNSAFE_YAML, f"{path.relative_to(REPO)}:{node.lineno}: yaml.{node.attr}"
        if isinstance(node, ast.ImportFrom) and node.module == "yaml":
            names = {alias.name for alias in node.names}
            assert not names & UNSAFE_YAML, f"{path.relative_to(REPO)}:{node.lineno}: from yaml import {names}"


def test_a_spec_cannot_run_code_through_a_python_tag(tmp_path):
    marker = tmp_path / "executed"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"name: evil\nmodel: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    with pytest.raises(SpecError) as raised:
        load_spec(spec)
    assert str(raised.value).startswith(f"{spec}:2:"), raised.value
    assert not marker.exists()


@pytest.mark.parametrize("dockerfile", sorted((REPO / "dockerfiles").glob("Dockerfile.*")), ids=lambda p: p.name)
def test_dockerfiles_declare_no_secret_build_args_or_env(dockerfile):
    names = set()
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        if match := re.match(r"\s*(ARG|ENV)\s+(.*)", line):
            names |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=" if "=" in match.group(2) else r"^([A-Z_][A-Z0-9_]*)",
                                    match.group(2)))
    assert names and names <= ALLOWED_BUILD_NAMES, names - ALLOWED_BUILD_NAMES
    assert not re.search(r"(?i)(password|secret|token|api_key|credential)", dockerfile.read_text())

