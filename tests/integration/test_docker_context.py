"""The docker build context and build arguments for a real exported model (the digits model is trained and
exported once per session, so these live in the integration tier): models, configs and flags are baked in,
every served model is there, and nothing secret leaks in."""
from __future__ import annotations

import pytest

from deploy.images import DOCKERFILES, prepare_context
from spec.loader import load_spec
from tests.conftest import write_spec
from tests.unit.test_security import ALLOWED_BUILD_NAMES

pytestmark = pytest.mark.slow


@pytest.fixture()
def spec_for(tmp_path):
    def make(**overrides):
        return load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **overrides))
    return make


def test_build_context_holds_models_configs_and_container_flags(spec_for, tmp_path, digits_export):
    _, version_dir = digits_export
    spec = spec_for(**{"export.base_path": str(version_dir.parents[1]),
                       "serving.batching": {"enabled": True, "max_batch_size": 8}})
    context = prepare_context(spec, "cpu", tmp_path / "ctx", [int(version_dir.name)], log=lambda line: None)
    assert (context / "models" / "digits_cnn" / version_dir.name / "saved_model.pb").exists()
    assert (context / "Dockerfile").read_text() == (DOCKERFILES / "Dockerfile.cpu").read_text()
    flags = (context / "config" / "server.flags").read_text().splitlines()
    assert "--port=8500" in flags and "--rest_api_port=8501" in flags and "--enable_batching=true" in flags
    assert "--model_config_file=/config/models.config" in flags and not any(f.startswith("--host") for f in flags)
    assert 'base_path: "/models/digits_cnn"' in (context / "config" / "models.config").read_text()
    assert (context / "serve.sh").stat().st_mode & 0o111


def test_build_context_holds_every_served_model(tmp_path, digits_export, testdata):
    from deploy.embedded import DeployError
    from server.configs import load_model_config_file
    from exporter.export import ensure_exported

    _, version_dir = digits_export
    spec_path = write_spec(tmp_path, "specs/digits_and_half_plus_two.yaml",
                           **{"export.base_path": str(version_dir.parents[1])})
    write_spec(tmp_path, "specs/half_plus_two.yaml", **{
        "model.source.path": str(testdata / "saved_model_half_plus_two_cpu" / "00000123"),
        "export.base_path": str(tmp_path / "m")})
    spec = load_spec(spec_path)
    with pytest.raises(DeployError, match="no exported version of half_plus_two"):
        prepare_context(spec, "cpu", tmp_path / "ctx", [int(version_dir.name)], log=lambda line: None)
    assert ensure_exported(spec, log=lambda line: None) == version_dir  # exports what also_serve lists
    context = prepare_context(spec, "cpu", tmp_path / "ctx", [int(version_dir.name)], log=lambda line: None)
    assert (context / "models" / "half_plus_two" / "1" / "saved_model.pb").exists()
    models = load_model_config_file(str(context / "config" / "models.config"))
    assert [(m.name, m.base_path) for m in models] == [("digits_cnn", "/models/digits_cnn"),
                                                      ("half_plus_two", "/models/half_plus_two")]


def test_build_args_and_context_hold_no_secrets(tmp_path, digits_export, monkeypatch):
    from deploy.containers import build_plan
    from deploy.images import prepare_context

    _, version_dir = digits_export
    spec = load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **{"export.base_path": str(version_dir.parents[1])}))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-bake-me")  # nothing from the environment may leak in
    plan = build_plan(spec, log=lambda line: None)
    assert set(plan.buildargs) <= ALLOWED_BUILD_NAMES
    assert not any("do-not-bake-me" in value for value in plan.buildargs.values())
    context = prepare_context(spec, "cpu", tmp_path / "ctx", plan.versions, log=lambda line: None)
    files = {str(p.relative_to(context)) for p in context.rglob("*") if p.is_file()}
    assert files == {f for f in files if f in ("Dockerfile", "serve.sh") or f.startswith(("models/digits_cnn/",
                                                                                            "config/"))}, files
    for path in context.rglob("*"):
        if path.is_file() and path.suffix in ("", ".config", ".flags", ".sh", ".txt"):
            assert b"do-not-bake-me" not in path.read_bytes(), path

