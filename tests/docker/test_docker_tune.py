"""make tune on the docker backend, with a real engine: each trial builds and runs its image through the same
deploy code as make deploy. The image variants searched are cpu (Dockerfile.cpu on the offline TF Serving
stand-in) and cpu-optimized, whose build needs TF Serving's devel image, which this offline engine does not have:
a real deployment failure, which tune must record while the search goes on, leaving no container behind.

Not `measures`: it checks what tune records and leaves (a trial measured or limited, the failed build, no container
left), never a figure, so it runs in the first tier beside other Docker tests (only its own spec's containers count)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, write_spec
from tests.docker.test_docker import _ours
from tests.serverproc import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_tune_on_docker_records_an_image_that_cannot_be_built_and_goes_on(tmp_path, digits_export, engine,
                                                                         tf_serving_standin):
    from importlib.metadata import version

    from tests.docker.standin import STANDIN

    _, version_dir = digits_export
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "serving.base_image": f"{STANDIN}:{version('tensorflow')}", "export.base_path": str(version_dir.parents[1]),
        "serving.backend": "docker", "serving.image": "cpu", "serving.network": "host",
        "serving.grpc_port": free_port(), "serving.rest_port": free_port(),
        "benchmark.output_dir": str(tmp_path / "reports"), "benchmark.protocols": ["grpc"],
        "benchmark.payloads": ["image_b64"], "benchmark.images.count": 2, "benchmark.slo": "p90:100ms",
        "benchmark.duration": "3s", "benchmark.warmup": "1s", "benchmark.min_duration": "2s",
        "benchmark.precision": "50%", "benchmark.late_tolerance": "20ms", "benchmark.drain": "5s",
        "benchmark.stability_percent": 1000,  # mechanics, no figure judged: probes measure their window, no settling
        "tune.batching": [False], "tune.intra_op_parallelism": [0], "tune.inter_op_parallelism": [0],
        "tune.grpc_max_threads": [0], "tune.image": ["cpu", "cpu-optimized"]})
    done = run_cli("-m", "loadtests", "tune", "--spec", str(spec_path), timeout=1500)
    assert done.returncode in (0, 4), done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "reports" / "digits_cnn" / "tune" / "latest" / "tune.json").read_text())
    assert result["backend"] == "docker" and result["complete"]
    first, second = result["trials"]
    assert first["config"]["image"] == "cpu" and first["status"] in ("measured", "limited"), first
    assert second["config"]["image"] == "cpu-optimized" and second["status"] == "failed", second
    assert second["error"], second
    assert result["best"]["trial"] == 1 and result["best"]["flags"][0] == "--port=8500"
    summary = json.loads((tmp_path / "reports" / "digits_cnn" / "tune" / "latest" / "trials" / "01" /
                          "summary.json").read_text())
    assert summary["provenance"]["backend"] == "docker"
    assert summary["provenance"]["image"].startswith("tfserve-bench/digits_cnn:cpu-v")
    left = _ours(engine, spec_path)
    assert not left, [c.name for c in left]
