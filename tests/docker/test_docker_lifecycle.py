"""make lifecycle BACKEND=docker with a real engine, every part on containers built on the offline
tensorflow/serving stand-in: cold starts with and without the export's warmup records (the container's memory read
from the engine), a version swap delivered into a folder mounted over the image's model, density with two copies in
one container, and nothing left running."""
from __future__ import annotations

import json

import pytest

from loadtests.measure import coldstart
from spec.results import LifecycleResult
from tests.conftest import run_cli
from tests.docker.test_docker import _ours, _spec

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_every_lifecycle_part_on_containers(tmp_path, digits_export, engine, tf_serving_standin):
    _, version_dir = digits_export
    spec_path = _spec(tmp_path, digits_export, "cpu", **{"lifecycle.first_requests": 20,
                                                         "lifecycle.steady_requests": 40,
                                                         "lifecycle.start_timeout": "120s",
                                                         "lifecycle.swap.baseline": "2s", "lifecycle.swap.after": "1s",
                                                         "lifecycle.density.duration": "2s"})
    done = run_cli("-m", "loadtests", "lifecycle", "--spec", str(spec_path), "--repeats", "1", "--max-models", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    latest = tmp_path / "reports" / "digits_cnn" / "lifecycle" / "latest"
    result = LifecycleResult.from_dict(json.loads((latest / "lifecycle.json").read_text()), "lifecycle.json")
    assert result.backend == "docker" and result.provenance["image"].startswith("tfserve-bench/digits_cnn:cpu-v")
    exported, bare = result.cold_start
    for variant in (exported, bare):
        [start] = variant.starts
        assert 0 < start["ports_open_s"] <= start["available_s"] <= start["first_answer_s"] < 120, start
        # the container's memory as the engine reports it: a TensorFlow process holds far more than 50 MiB
        assert start["memory_available_mb"] > 50 and start["memory_peak_mb"] > 50, start
    records = coldstart.warmup_records(version_dir)
    assert exported.starts[0]["warmup_runs"] == 1 and exported.starts[0]["warmup_records_read"] == records
    assert bare.starts[0]["warmup_runs"] == 0 and result.warmup["used"] is True
    # the swap: the container saw the new version appear in the mounted folder, and switched without a failure
    swapped = result.swap["models"]["digits_cnn"]
    assert swapped["versions"] == [1, 2] and swapped["failures"] == 0 and swapped["old_after_switch"] == 0, swapped
    assert result.swap["markers"]["copy"] < result.swap["markers"]["available"]
    # density: two copies in one container, its memory from the engine at each step
    steps = result.density["steps"]
    assert [s["models"] for s in steps] == [1, 2] and all(s["failures"] == 0 for s in steps), steps
    assert all(s["memory_available_mb"] > 50 and s["memory_warm_mb"] > 50 for s in steps), steps
    assert [s["warmup_requests"] for s in steps] == [records, 2 * records] and not steps[1]["warmup_failures"]
    assert _ours(engine, spec_path) == [], "every container the cold starts ran is gone"
