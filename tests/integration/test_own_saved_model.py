"""`make bench` on the SavedModel a user already has: tutorial-shaped exports with signatures of their own, each
over REST and gRPC with zero failures and answers equal to the in-process ones."""
from __future__ import annotations

import json

import pytest
import yaml

from tests import tutorial_models
from tests.conftest import NOISE, run_cli
from tests.serverproc import free_port

pytestmark = pytest.mark.slow
# No test here is `measures`: they check mechanics (exit codes, both protocols answered, answers equal to the
# in-process ones, messages), which a busy machine cannot change, so they run in the first tier beside other tests.
# The benches judge no figure: 1.5 s windows, settling off, 10 requests enough, exit 4 allowed for NOISE only.


def _spec(tmp_path, model_dir, input_size, benchmark=None, preprocessing="unit"):
    height, width = input_size
    data = {"name": "mine",
            "model": {"source": {"kind": "saved_model", "path": str(model_dir), "mode": "as_is"},
                      "input": {"height": height, "width": width, "channels": 3,
                                "preprocessing": {"mode": preprocessing}}},
            "export": {"base_path": str(tmp_path / "models")},
            "serving": {"grpc_port": free_port(), "rest_port": free_port()},
            "benchmark": {"users": [1], "duration": "1.5s", "warmup": "0.5s", "protocols": ["rest", "grpc"],
                          "images": {"count": 3, "resolutions": [[64, 48]]}, "output_dir": str(tmp_path / "reports"),
                          "min_duration": "0.5s", "stability_percent": 1000, "min_requests": 10,
                          **(benchmark or {})}}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _bench(spec_path, tmp_path) -> dict:
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path))
    summary_path = tmp_path / "reports" / "mine" / "latest" / "summary.json"
    assert summary_path.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    reasons = [reason for r in summary["runs"] for reason in r["invalid_reasons"]]
    assert result.returncode == 0 or (result.returncode == 4 and all(x.startswith(NOISE) for x in reasons)), \
        result.stdout[-3000:] + result.stderr[-3000:]
    assert {r["protocol"] for r in summary["runs"]} == {"rest", "grpc"}
    for r in summary["runs"]:
        assert r["failures"] == 0 and r["requests"] > 5, r
    assert summary["answers"]["informative"], summary["answers"]
    assert {c["protocol"] for c in summary["correctness"]} == {"rest", "grpc"}
    return summary


@pytest.mark.parametrize("builder, size, benchmark, payload", [
    (tutorial_models.keras_float, (32, 32), None, "tensor_row"),
    (tutorial_models.string_decoder, (48, 48), None, "image_b64"),
    (tutorial_models.image_height_width, (40, 40),
     {"signature": "predict_mask", "extra_inputs": {"height": "image_height", "width": "image_width"}},
     "tensor_uint8"),
    (tutorial_models.tf1_pbtxt, (24, 24), {"batch_size": 2}, "tensor_row"),
])
def test_a_tutorial_saved_model_benchmarks_over_both_protocols(tmp_path, builder, size, benchmark, payload):
    model_dir = builder(tmp_path / "exported")
    summary = _bench(_spec(tmp_path, model_dir, size, benchmark), tmp_path)
    assert {r["payload"] for r in summary["runs"]} == {payload}



def test_an_input_the_spec_does_not_describe_is_one_line_before_deploying(tmp_path):
    model_dir = tutorial_models.image_height_width(tmp_path / "exported")
    result = run_cli("-m", "loadtests", "bench", "--spec",
                     str(_spec(tmp_path, model_dir, (40, 40), {"signature": "predict_mask"})))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "signature 'predict_mask' also takes 'height' DT_INT32 [-1]: give it in benchmark.extra_inputs" \
        in errors[0], errors[0]
    assert "starting mine" not in result.stdout


def test_keras_saved_with_tf_saved_model_save_is_one_line(tmp_path):
    """Keras 3 + tf.saved_model.save writes variable handles a TF1 session cannot resolve: said in one line, with
    the fix, not a traceback."""
    model_dir = tutorial_models.keras_tf_saved_model_save(tmp_path / "exported")
    result = run_cli("-m", "loadtests", "bench", "--spec", str(_spec(tmp_path, model_dir, (32, 32))))
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "save it with model.export(path)" in result.stderr
