"""A plain (non-editable) `pip install .` of a copy of the source: `tfsb` answers from another directory, the
files the code reads are installed as package data, and a short digits bench runs there, writing its state under
the working directory and its report where the spec says, nothing inside the installed code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_spec
from tests.serverproc import free_port

# its bench is checked for what it writes and where (exit 0 or 4), not for its figures: it may run beside
# another test (not `measures`)
pytestmark = pytest.mark.slow

LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "reports", "models", ".run", "__pycache__", "*.egg-info",
                                  ".pytest_cache", ".hypothesis")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    source, site = root / "source", root / "site"
    shutil.copytree(REPO, source, ignore=LEFT_OUT)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(root / "cache")}
    env.pop("TFSB_STATE_DIR", None)
    return site, elsewhere, env


def _run(installed, *args, timeout=120):
    site, elsewhere, env = installed
    return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_installed_packages_and_their_data_are_used(installed):
    site, _, _ = installed
    code = ("import json, deploy.images, loadtests.report, demo.app, server.native, tfsb;"
            "print(json.dumps({'tfsb': tfsb.__file__, 'dockerfiles': str(deploy.images.DOCKERFILES),"
            "'assets': str(loadtests.report.assets()), 'static': str(demo.app.STATIC),"
            "'native': str(server.native.LIBRARY)}))")
    done = _run(installed, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    where = json.loads(done.stdout)
    for name in ("tfsb", "dockerfiles", "assets", "static"):
        assert where[name].startswith(str(site)), (name, where[name])
    for data in ("dockerfiles/Dockerfile.cpu", "dockerfiles/Dockerfile.embedded", "dockerfiles/serve.sh",
                 "dockerfiles/requirements-server.txt", "loadtests/report/assets/report.css",
                 "loadtests/report/assets/report.js", "loadtests/report/assets/page.html", "demo/static/index.html",
                 "server/skeleton.c"):
        assert (site / data).is_file(), data
    assert not where["native"].startswith(str(site)), "the C helpers are built outside the installed code"


def test_tfsb_answers_from_another_directory(installed):
    site, _, _ = installed
    for command in ([str(site / "bin" / "tfsb"), "--help"], [sys.executable, "-m", "tfsb", "--help"]):
        done = _run(installed, *command)
        assert done.returncode == 0 and "capacity" in done.stdout and "deploy" in done.stdout, done.stderr[-2000:]


def test_a_short_digits_bench_runs_from_another_directory(installed, digits_export, tmp_path):
    site, elsewhere, _ = installed
    spec_path, version_dir = digits_export
    spec = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "export.base_path": str(version_dir.parents[1]), "benchmark.output_dir": str(tmp_path / "reports"),
        "benchmark.users": [1], "benchmark.protocols": ["rest", "grpc"], "benchmark.payloads": ["image_b64"],
        "benchmark.duration": "2s", "benchmark.warmup": "1s", "benchmark.min_duration": "1s",
        "benchmark.images.count": 3, "benchmark.stability_percent": 1000, "benchmark.min_requests": 20,
        "serving.rest_port": free_port(), "serving.grpc_port": free_port()})
    done = _run(installed, str(site / "bin" / "tfsb"), "bench", "--spec", str(spec), timeout=600)
    assert done.returncode in (0, 4), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(next((tmp_path / "reports" / "digits_cnn").glob("20*/summary.json")).read_text())
    assert {r["protocol"] for r in summary["runs"]} == {"rest", "grpc"}
    assert all(r["requests"] > 0 and r["failures"] == 0 for r in summary["runs"])
    assert (elsewhere / ".run").is_dir(), "the embedded server's state goes under the working directory"
    assert not (site / ".run").exists() and not (site / "build").exists(), "nothing written inside the install"
