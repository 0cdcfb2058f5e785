"""Answer checks that can fail: the default model's answers depend on the image, a wrong preprocessing is caught
(on the default spec and on an as-is SavedModel), and a model whose answers do not depend on the input is said
to make the check uninformative (exit 5 unless the spec accepts it)."""
from __future__ import annotations

import json

import pytest

from loadtests.drive.payloads import answer_spread
from loadtests.measure.payloadsets import load_or_build
from spec.loader import load_spec
from tests.conftest import run_cli, write_spec
from tests.serverproc import free_port

pytestmark = pytest.mark.slow


def _short(tmp_path, **more) -> dict:
    """A one-run bench over REST tensors (what a wrong preprocessing breaks) on free ports."""
    return {"serving.grpc_port": free_port(), "serving.rest_port": free_port(),
            "benchmark.output_dir": str(tmp_path / "reports"), "benchmark.users": [1], "benchmark.duration": "1s",
            "benchmark.warmup": "0.5s", "benchmark.protocols": ["rest"], "benchmark.payloads": ["tensor_row"],
            "benchmark.images.count": 4, "benchmark.min_duration": "0.5s", "benchmark.stability_percent": 1000,
            **more}


def test_the_default_model_answers_depend_on_the_image(default_export, tmp_path):
    version_dir = default_export
    spec = load_spec(write_spec(tmp_path, "specs/mobilenet_v2.yaml", **{
        "export.base_path": str(version_dir.parents[1]), **_short(tmp_path)}))
    payloads, _ = load_or_build(spec, version_dir, ["tensor_row"], log=lambda line: None)
    spread = answer_spread(payloads.expected)
    assert spread["informative"], spread
    assert spread["distinct_top1"] >= 3 and spread["max_score_spread"] > 0.05
    top2 = -payloads.expected
    top2.sort(axis=1)
    assert ((top2[:, 1] - top2[:, 0]) > 1e-3).all()  # a decisive top-1 for every image, far beyond the tolerance


def test_a_wrong_preprocessing_fails_the_check_on_the_default_spec(default_export, tmp_path):
    spec_path = write_spec(tmp_path, "specs/mobilenet_v2.yaml", **{
        "export.base_path": str(default_export.parents[1]), "model.input.preprocessing.mode": "unit",
        **_short(tmp_path)})
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path))
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "correctness check failed, no benchmark was run" in result.stderr and "tensor_row" in result.stderr


def test_a_wrong_preprocessing_fails_the_check_on_an_as_is_saved_model(digits_export, tmp_path):
    _spec_path, version_dir = digits_export
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "model.source": {"kind": "saved_model", "path": str(version_dir), "mode": "as_is"},
        "export.base_path": str(tmp_path / "models"), "model.input.preprocessing.mode": "symmetric",
        **_short(tmp_path)})
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path))
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "correctness check failed" in result.stderr and "top-1" in result.stderr


def test_answers_that_ignore_the_input_make_the_check_uninformative(tmp_path):
    """MobileNetV2 with raw random weights (calibrate: false) answers 1/classes everywhere: exit 5, and the report
    says why; accepted in the spec, the same run exits 0."""
    values = {"model.source.calibrate": False, "model.input.height": 96, "model.input.width": 96,
              "export.base_path": str(tmp_path / "models"), "export.warmup": False, **_short(tmp_path)}
    spec_path = write_spec(tmp_path, "specs/mobilenet_v2.yaml", **values)
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path))
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]
    assert "exporting mobilenet_v2 first" in result.stdout  # the bench exports a spec not exported yet
    assert "correctness: NOT INFORMATIVE: the model gives the same answer for all 4 benchmark images" in result.stdout
    latest = tmp_path / "reports" / "mobilenet_v2" / "latest"
    summary = json.loads((latest / "summary.json").read_text())
    assert summary["answers"]["informative"] is False and summary["answers"]["max_score_spread"] < 1e-3
    assert "CORRECTNESS NOT INFORMATIVE" in (latest / "report.html").read_text()
    accepted = write_spec(tmp_path, "specs/mobilenet_v2.yaml",
                          **{**values, "benchmark.accept_uninformative_answers": True})
    result = run_cli("-m", "loadtests", "bench", "--spec", str(accepted))
    assert result.returncode in (0, 4), result.stdout[-2000:] + result.stderr[-2000:]
    assert "accepted by benchmark.accept_uninformative_answers" in result.stdout


@pytest.mark.parametrize("payloads, says", [
    ("image_b64", "signature 'serving_default' has inputs 'x' DT_FLOAT [-1, 1]; the bench needs exactly one image "
                  "input"),
    ("tensor_row", "found 0 image inputs"),
])
def test_a_signature_the_bench_cannot_feed_is_one_line_before_anything_is_deployed(tmp_path, payloads, says):
    """TF Serving's half_plus_two (x [N, 1] -> y) served as is has no image input: exit 2 with what it has and
    what the bench needs, no traceback, and no server started."""
    from tests.conftest import REPO
    testdata = REPO.parent / "shared" / "fixtures" / "tfserving_testdata" / "saved_model_half_plus_two_cpu"
    if not testdata.is_dir():
        pytest.skip(f"TF Serving's test data is not at {testdata}")
    spec_path = write_spec(tmp_path, "specs/half_plus_two.yaml", **{
        "model.source.path": str(testdata / "00000123"), "export.base_path": str(tmp_path / "models"),
        **_short(tmp_path), "benchmark.payloads": [payloads]})
    result = run_cli("-m", "loadtests", "bench", "--spec", str(spec_path))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert says in errors[0], errors[0]
    assert "benchmark.extra_inputs" in errors[0]
    assert "starting half_plus_two" not in result.stdout  # refused before any deployment
