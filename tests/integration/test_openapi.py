"""docs/openapi.yaml, the REST API description we ship, checked two ways against the embedded server:
it describes every route the server has, and schemathesis (its CLI, with docs/schemathesis.toml) sends
thousands of generated requests from it. Every answer must be a documented status with a body matching the
documented schema (a valid 200, or a 4xx with TF Serving's {"error": ...} body), never a 5xx; schema-violating
requests must be refused; and the server must stay up, answer the next request and stop cleanly."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.serverproc import REPO, ServerProcess

pytestmark = pytest.mark.slow
SPEC = REPO / "docs" / "openapi.yaml"
ST = Path(REPO / ".venv" / "bin" / "st")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection")
SERVED = ["half_plus_two", "half_plus_two_tf2", "digits_cnn"]


@pytest.fixture(scope="module")
def server(testdata, digits_export, tmp_path_factory):
    _, digits_version = digits_export
    config = tmp_path_factory.mktemp("openapi") / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "half_plus_two" base_path: "{testdata / 'saved_model_half_plus_two_2_versions'}"
           model_platform: "tensorflow" model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 123 }} }}
  config {{ name: "half_plus_two_tf2" base_path: "{testdata / 'saved_model_half_plus_two_tf2_cpu'}"
           model_platform: "tensorflow" }}
  config {{ name: "digits_cnn" base_path: "{digits_version.parent}" model_platform: "tensorflow" }}
}}
""")
    proc = ServerProcess(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models",
                         "--max_request_bytes=1000000")
    yield proc
    assert proc.stop() == 0, proc.logs()[-3000:]  # never crashed, and drained cleanly


def schemathesis_run(schema: Path, url: str, report_dir: Path, max_examples: int) -> dict:
    """Run `st run` over every operation of `schema`; its JSON report, with the console output on failure."""
    result = subprocess.run(
        [str(ST), "--no-color", "--config-file", str(REPO / "docs" / "schemathesis.toml"), "run", str(schema),
         "--url", url, "--checks", CHECKS, "--max-examples", str(max_examples), "--seed", "20261121",
         "--report", "json", "--report-dir", str(report_dir), "--request-timeout", "30"],
        cwd=report_dir.parent, capture_output=True, text=True, timeout=900)  # its .schemathesis cache goes there
    reports = sorted(report_dir.glob("*.json"))
    assert reports, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads(reports[-1].read_text())
    assert result.returncode == 0 and not report["failures"] and not report["errors"], (
        result.stdout[-6000:] + result.stderr[-2000:])
    return report


def test_the_description_is_valid_openapi_and_covers_every_route_of_the_server():
    import schemathesis

    document = yaml.safe_load(SPEC.read_text())
    schema = schemathesis.openapi.from_dict(document)  # refuses a document that is not valid OpenAPI 3
    operations = {(op.method.upper(), op.path) for op in (result.ok() for result in schema.get_all_operations())}
    selectors = ["", "/versions/{version}", "/labels/{label}"]
    expected = {("GET", f"/v1/models/{{model_name}}{s}") for s in selectors}
    expected |= {("GET", f"/v1/models/{{model_name}}{s}/metadata") for s in selectors}
    expected |= {("POST", f"/v1/models/{{model_name}}{s}:{verb}") for s in selectors
                 for verb in ("predict", "classify", "regress")}
    assert operations == expected
    # the server's own routing accepts exactly these shapes (server/rest.py)
    from server.rest import GET_PATH, POST_PATH
    for method, path in expected:
        concrete = path.replace("{model_name}", "m").replace("{version}", "1").replace("{label}", "l")
        assert (POST_PATH if method == "POST" else GET_PATH).fullmatch(concrete), path


def test_the_readme_example_in_the_description_is_what_the_server_answers(server):
    document = yaml.safe_load(SPEC.read_text())
    body = document["components"]["requestBodies"]["Predict"]["content"]["application/json"]["examples"]
    status, answer = server.http("POST", "/v1/models/half_plus_two:predict", body["readme"]["value"])
    assert (status, answer) == (200, {"predictions": [2.5, 3.0, 4.5]})


def test_schemathesis_generated_requests_get_documented_answers_and_never_a_5xx(server, tmp_path):
    # 1. the shipped description as it is: arbitrary model names, versions and labels (routing, 404s, 400s)
    generic = schemathesis_run(SPEC, server.rest, tmp_path / "generic", max_examples=100)
    # 2. the same description narrowed to what this server serves, so generated bodies reach the models'
    #    tensor decoding, signatures and tf.Example parsing (unknown names stay possible through anyOf)
    document = yaml.safe_load(SPEC.read_text())
    parameters = document["components"]["parameters"]
    parameters["model_name"]["schema"] = {"type": "string", "enum": SERVED}
    parameters["version"]["schema"] = {"type": "integer", "enum": [1, 123, 124]}
    # status by label ignores the label (TF Serving), so a label outside the list is not a schema violation
    parameters["label"]["schema"] = {"anyOf": [{"type": "string", "enum": ["stable"]},
                                               {"type": "string", "minLength": 1}]}
    narrowed = tmp_path / "openapi-served.json"
    narrowed.write_text(json.dumps(document))
    served = schemathesis_run(narrowed, server.rest, tmp_path / "served", max_examples=100)

    generated = generic["test_cases"]["generated"] + served["test_cases"]["generated"]
    print(f"\nschemathesis: {generic['test_cases']['generated']} requests from docs/openapi.yaml, "
          f"{served['test_cases']['generated']} from it narrowed to {', '.join(SERVED)}; "
          f"{generated} in all, 0 failures, 0 errors")
    assert generated >= 2000
    for report in (generic, served):
        assert report["operations"]["tested"] == 15
    # still serving, and nothing leaked into the connection state of the next client
    status, answer = server.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    assert (status, answer) == (200, {"predictions": [2.5, 3.0, 4.5]})
    assert "AVAILABLE" in json.dumps(server.http("GET", "/v1/models/digits_cnn")[1])
