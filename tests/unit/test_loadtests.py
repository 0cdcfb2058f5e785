"""Load-test building blocks without servers: payload rendering and checks, the sweep plan, measurements,
overrides, the report, and the config files a deployment writes."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from loadtests.drive.payloads import PayloadSet, cells, probabilities_from_grpc, probabilities_from_rest
from loadtests.drive.recorder import write_samples
from loadtests.measure.run import Step, Target, locust_command, measure, plan, worker_command
from spec.errors import UsageError
from spec.loader import load_spec
from spec.results import BenchSummary
from tests.conftest import REPO, write_spec


@pytest.fixture()
def payloads():
    rng = np.random.default_rng(1)
    expected = rng.dirichlet(np.ones(5), size=3).astype(np.float32)
    return PayloadSet("m", ["a@4x2", "b@4x2", "c@8x4"], [(4, 2), (4, 2), (8, 4)],
                      [b"\xff\xd8jpeg-a", b"\xff\xd8jpeg-bb", b"\xff\xd8jpeg-ccc"],
                      rng.uniform(-1, 1, (3, 2, 2, 3)).astype(np.float32), expected, {"kind": "test"})


def test_payloads_round_trip_through_npz(payloads, tmp_path):
    payloads.save(tmp_path / "p.npz")
    loaded = PayloadSet.load(tmp_path / "p.npz")
    assert loaded.jpegs == payloads.jpegs and loaded.names == payloads.names and loaded.sizes == payloads.sizes
    np.testing.assert_array_equal(loaded.tensors, payloads.tensors)
    sent = PayloadSet.from_bytes(payloads.to_bytes())  # what a Locust master sends its workers
    assert sent.jpegs == payloads.jpegs and sent.model == "m"
    np.testing.assert_array_equal(sent.expected, payloads.expected)
    np.testing.assert_array_equal(loaded.expected, payloads.expected)
    assert not list(tmp_path.glob("*.partial*"))


def test_rest_bodies_follow_tf_serving_json(payloads):
    image = json.loads(payloads.rest_body("image_b64", 1))
    assert image["signature_name"] == "serving_default"
    assert base64.b64decode(image["instances"][0]["b64"]) == payloads.jpegs[1]
    row = json.loads(payloads.rest_body("tensor_row", 2))
    columnar = json.loads(payloads.rest_body("tensor_columnar", 2))
    assert row["signature_name"] == columnar["signature_name"] == "predict_tensor"
    np.testing.assert_allclose(np.array(row["instances"]), payloads.tensors[2:3], atol=1e-6)
    assert columnar["inputs"] == row["instances"]


def test_grpc_requests_carry_bytes_or_tensor_content(payloads):
    request = payloads.grpc_request("image_b64", 0, "m")
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.inputs["image_bytes"].string_val) == [payloads.jpegs[0]]
    assert list(request.output_filter) == ["probabilities"]
    tensor = payloads.grpc_request("tensor_columnar", 2, "m").inputs["images"]
    assert [d.size for d in tensor.tensor_shape.dim] == [1, 2, 2, 3]
    np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, np.float32).reshape(1, 2, 2, 3),
                                  payloads.tensors[2:3])


def test_answers_are_read_from_rest_and_grpc(payloads):
    assert probabilities_from_rest(b'{"predictions": [[0.5, 0.5]]}') == [[0.5, 0.5]]
    assert probabilities_from_rest(b'{"outputs": [[0.25, 0.75]]}') == [[0.25, 0.75]]
    assert probabilities_from_rest(b'{"outputs": {"probabilities": [[1.0]]}}') == [[1.0]]
    from tensorflow_serving.apis import predict_pb2
    response = predict_pb2.PredictResponse()
    response.outputs["probabilities"].float_val.extend([0.1, 0.9])
    response.outputs["probabilities"].tensor_shape.dim.add(size=1)
    response.outputs["probabilities"].tensor_shape.dim.add(size=2)
    np.testing.assert_allclose(probabilities_from_grpc(response), [[0.1, 0.9]])


def test_check_accepts_the_right_answer_and_explains_wrong_ones(payloads):
    right = payloads.expected[1:2]
    assert payloads.check(1, right) is None
    assert payloads.check(1, right + 5e-5) is None  # float noise is not a wrong answer
    assert "shape [5]" in payloads.check(1, right[0])
    assert "NaN or Inf" in payloads.check(1, np.where(right > 0, np.nan, right))
    wrong = np.roll(right, 1, axis=1)
    if wrong.argmax() != right.argmax():
        assert "top-1 class" in payloads.check(1, wrong) and "b@4x2" in payloads.check(1, wrong)
    assert "not a numeric array" in payloads.check(1, [["x"]])


def test_a_near_tie_on_top1_is_the_same_answer(payloads):
    answer = payloads.expected[0:1].copy()
    want = answer.argmax()
    other = (want + 1) % answer.shape[1]
    answer[0, other] = answer[0, want] + 5e-5
    assert payloads.check(0, answer) is None
    answer[0, other] = answer[0, want] + 5e-3
    assert "top-1 class" in payloads.check(0, answer)


def test_sweep_interleaves_protocols_and_runs_grpc_tensor_once():
    assert cells(["rest", "grpc"], ["image_b64", "tensor_row", "tensor_columnar"]) == [
        ("rest", "image_b64"), ("grpc", "image_b64"), ("rest", "tensor_row"), ("grpc", "tensor_row"),
        ("rest", "tensor_columnar")]
    steps = plan([1, 4], ["rest", "grpc"], ["image_b64"])
    assert [(s.users, s.protocol) for s in steps] == [(1, "rest"), (1, "grpc"), (4, "rest"), (4, "grpc")]
    assert steps[1].slug == "grpc-image_bytes-u1"


def test_locust_command_selects_the_user_and_measures_a_window(tmp_path):
    target = Target("m", "http://127.0.0.1:1", "127.0.0.1:2", tmp_path / "p.npz", 5, 20, 10, server_pid=42)
    command = locust_command(Step("grpc", "tensor_row", 8), target, tmp_path)
    assert command[-1] == "GrpcUser" and "--headless" in command
    assert command[command.index("--measure") + 1] == "5,20,60"  # max_duration: 3 x duration by default
    assert command[command.index("--stability") + 1] == "10,50"
    assert command[command.index("--users") + 1] == "8" and command[command.index("--server-pid") + 1] == "42"
    assert command[command.index("--payload") + 1] == "tensor_row"


def test_distributed_step_is_a_master_waiting_for_every_worker(tmp_path):
    target = Target("m", "http://127.0.0.1:1", "127.0.0.1:2", tmp_path / "p.npz", 5, 20, 10, workers=2,
                    remote_workers=1, master_bind="127.0.0.1", master_port=0)
    command = locust_command(Step("rest", "image_b64", 8), target, tmp_path, master_port=5601)
    assert "--master" in command and command[-1] == "RestUser"
    assert command[command.index("--expect-workers") + 1] == "3"
    assert command[command.index("--master-bind-host") + 1] == "127.0.0.1"
    assert command[command.index("--master-bind-port") + 1] == "5601"
    worker = worker_command("127.0.0.1", 5601, ["RestUser"])
    assert "--worker" in worker and worker[worker.index("--master-port") + 1] == "5601" and worker[-1] == "RestUser"
    single = locust_command(Step("rest", "image_b64", 8), Target("m", "u", "g", tmp_path / "p.npz", 5, 20, 10),
                            tmp_path)
    assert "--master" not in single and "--expect-workers" not in single


def test_worker_samples_merge_into_one_window(tmp_path):
    def part(t, latency, ok, image, window, cpu, failures, in_flight):
        n = len(t)
        return {"t": t, "latency_ms": latency, "ok": ok, "image": image, "window_s": window, "cpu_percent": cpu,
                "failures": failures, "due": [float("nan")] * n, "service_ms": latency, "late": [False] * n,
                "in_flight_mean": in_flight}
    parts = [part([0.5, 2.0], [10.0, 30.0], [True, False], [0, 1], 10.0, 40.0, {"HTTP 503": 1}, 0.25),
             part([1.0], [20.0], [True], [2], 10.1, 85.0, {}, 0.5),
             part([], [], [], [], 10.0, None, {}, 0.0)]
    write_samples(tmp_path / "s.npz", parts, server_cpu_percent=120.0, finished_at=0.0, window_s=10.0)
    with np.load(tmp_path / "s.npz") as data:
        assert data["t"].tolist() == [0.5, 1.0, 2.0] and data["latency_ms"].tolist() == [10.0, 20.0, 30.0]
        assert data["ok"].tolist() == [True, True, False] and data["image"].tolist() == [0, 2, 1]
    entry = measure(Step("rest", "image_b64", 3), tmp_path / "s.npz", [1, 2, 3], [(1, 1)] * 3)
    assert entry["generator_processes"] == 3 and entry["generator_cpu_percent"] == 85.0 and entry["generator_bound"]
    assert (entry["requests"], entry["failures"], entry["failure_reasons"]) == (3, 1, {"HTTP 503": 1})
    assert entry["rps"] == pytest.approx(2 / 10.0) and entry["server_cpu_percent"] == 120.0
    assert entry["littles_law"]["in_flight_mean"] == pytest.approx(0.75)  # in flight adds up over the processes
    assert entry["littles_law"]["throughput_x_latency"] == pytest.approx((0.010 + 0.030 + 0.020) / 10.0)
    assert not entry["valid"] and any("generator-bound" in r for r in entry["invalid_reasons"])


def test_generators_are_checked_and_retarget_the_workers():
    from loadtests.measure.session import Generators

    with pytest.raises(UsageError, match="MASTER_PORT"):
        Generators(remote_workers=2).check()
    with pytest.raises(UsageError, match="0 or more"):
        Generators(workers=-1).check()
    Generators(workers=2).check()
    assert Generators().endpoints("http://127.0.0.1:8501", "127.0.0.1:8500") == ("http://127.0.0.1:8501",
                                                                                 "127.0.0.1:8500")
    assert Generators(target_host="10.0.0.5").endpoints("http://127.0.0.1:8501", "127.0.0.1:8500") == (
        "http://10.0.0.5:8501", "10.0.0.5:8500")


def _samples(path, latency, ok, image, cpu, window=10.0, due=None, service=None, late=None, **extra):
    n = len(latency)
    meta = {"window_s": window, "generator_cpu_percent": cpu, "server_cpu_percent": 150.0,
            "failures": {"WrongAnswer": int((~ok).sum())}, "finished_at": 0, **extra}
    np.savez(path, t=np.linspace(0, window, n) if due is None else due + latency / 1000.0, latency_ms=latency,
             ok=ok, image=image, due=np.full(n, np.nan) if due is None else due,
             service_ms=latency if service is None else service,
             late=np.zeros(n, bool) if late is None else late, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def test_measure_uses_every_sample_not_buckets(tmp_path):
    rng = np.random.default_rng(0)
    latency = rng.lognormal(3, 0.5, 5000)
    ok = np.ones(5000, bool)
    ok[:50] = False
    image = np.arange(5000) % 3
    _samples(tmp_path / "s.npz", latency, ok, image, cpu=35.0)
    entry = measure(Step("rest", "image_b64", 4), tmp_path / "s.npz", [100, 200, 300], [(4, 2)] * 3)
    good = latency[ok]
    assert entry["p99_ms"] == pytest.approx(np.percentile(good, 99))
    assert entry["p50_ms"] == pytest.approx(np.percentile(good, 50))
    assert entry["max_ms"] == pytest.approx(good.max())
    assert (entry["requests"], entry["failures"]) == (5000, 50)
    assert entry["rps"] == pytest.approx(4950 / 10.0)
    assert entry["bytes_per_request"] == pytest.approx(np.mean([[100, 200, 300][i] for i in image]))
    assert not entry["generator_bound"] and [b["requests"] for b in entry["by_image"]] == [
        int((ok & (image == i)).sum()) for i in range(3)]


def test_a_busy_generator_is_flagged(tmp_path):
    _samples(tmp_path / "s.npz", np.ones(10), np.ones(10, bool), np.zeros(10, int), cpu=91.0)
    assert measure(Step("grpc", "image_b64", 1), tmp_path / "s.npz", [1], [(1, 1)])["generator_bound"]


def test_overrides_are_validated_like_the_spec(tmp_path):
    from loadtests.measure.session import Overrides, apply_overrides

    spec = load_spec(REPO / "specs" / "digits_cnn.yaml")
    changed = apply_overrides(spec, Overrides(users="1, 2,16", duration="1m", protocols="grpc"))
    assert changed.benchmark.users == (1, 2, 16) and changed.benchmark.duration == 60.0
    assert changed.benchmark.protocols == ("grpc",) and changed.name == spec.name and changed.origin == spec.origin
    with pytest.raises(UsageError, match="users"):
        apply_overrides(spec, Overrides(users="0"))
    with pytest.raises(UsageError, match="duration"):
        apply_overrides(spec, Overrides(duration="soon"))
    with pytest.raises(UsageError, match="payloads"):
        apply_overrides(spec, Overrides(payloads="png"))


def _run(protocol, wire, users, rps, p50, bound=False, failures=0):
    return {"protocol": protocol, "payload": "image_b64" if "image" in wire else "tensor_row", "wire": wire,
            "mode": "closed", "users": users, "level": users, "offered_rps": None, "late_ratio": None,
            "service_p50_ms": p50, "service_p99_ms": float("nan"), "valid": not bound,
            "invalid_reasons": ["generator-bound: the busiest load generator used 95% of a core"] if bound else [],
            "requests": 100, "failures": failures, "failure_ratio": failures / 100,
            "failure_reasons": {"boom": failures} if failures else {}, "rps": rps, "p50_ms": p50, "p90_ms": p50,
            "p95_ms": p50, "p99_ms": float("nan"), "max_ms": p50, "mean_ms": p50, "bytes_per_request": 2048.0,
            "generator_cpu_percent": 95.0 if bound else 20.0, "generator_bound": bound, "server_cpu_percent": None,
            "by_image": [{"image": 0, "width": 4, "height": 2, "request_bytes": 2048, "requests": 100,
                          "p50_ms": p50}], "locust_html": "locust/x.html"}


def test_report_files_and_terminal_ratios(tmp_path):
    from loadtests import report
    from loadtests.report import plots, reportpage

    runs = [_run("rest", "image_b64", 1, 100.0, 10.0), _run("grpc", "image_bytes", 1, 125.0, 8.0),
            _run("rest", "image_b64", 4, 300.0, 13.0, bound=True), _run("grpc", "image_bytes", 4, 200.0, 20.0,
                                                                      failures=5)]
    summary = {"model": "m", "created": "now", "report_dir": str(tmp_path), "mode": "closed",
               "failure_threshold": 0.01, "failed": True, "valid": False, "provenance": {"backend": "docker", "git_commit": "abc", "server": "tfserve-bench "
                                              "embedded server", "base_image": "tfserve-bench/standin-serving:2.21.0",
                                              "base_image_id": "sha256:0123456789abcdef0123"},
               "correctness": [{"protocol": "rest", "wire": "image_b64", "images": 3, "max_abs_diff": 1e-7,
                                "top1_equal": True}], "runs": runs}
    written = reportpage.write(BenchSummary.made(summary), tmp_path)
    text = report.terminal_summary(written)
    assert "1.25x" in text and "0.80x" in text  # p50 10/8 and rps 100/125 at one user
    assert "generator-bound" in text and "FAILED grpc image_bytes users=4: 5/100" in text
    saved = json.loads((tmp_path / "summary.json").read_text())  # standard JSON: NaN became null
    assert saved["runs"][0]["p99_ms"] is None
    page = (tmp_path / "report.html").read_text()
    assert "generator-bound" in page and "FAILED" in page and "abc" in page
    served = "docker: tfserve-bench embedded server (tfserve-bench/standin-serving:2.21.0, sha256:0123456789ab)"
    assert f"<h1>m: REST vs gRPC on {served}</h1>" in page and served in text  # never passed off as TF Serving
    for name in plots.PLOTS:  # PNG copies beside the page, linked; the page itself needs no other file
        assert (tmp_path / name).stat().st_size > 1000 and f"href='{name}'" in page
    assert "src=" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "id=\"report-data\"" in page and "id='chart-latency'" in page
    # gRPC/REST p50: 8/10 at one user, 20/13 at four: geometric mean 1.109, so REST is 1 - 1/1.109 = 10% faster
    assert saved["headline"] == "REST image_b64 is 10% faster than gRPC image_bytes at p50 over 1-4 users; " \
        "1 of 4 runs invalid"
    assert saved["headline"] in page


def test_every_page_is_one_shell_with_one_stylesheet():
    """report.shell: text escaped, the page's HTML kept, the charts' data unable to end its script element, and
    the script only where a page has charts."""
    from loadtests import report

    page = report.shell("t <1>", "h & h", "<p id=x>body</p>", headline="a < b", data='{"k": "</script>"}')
    assert "<title>t &lt;1&gt;</title>" in page and "<h1>h &amp; h</h1>" in page
    assert "<p class=headline id=headline>a &lt; b</p>" in page and "<p id=x>body</p>" in page
    assert (report.assets() / "report.css").read_text() in page and '"</script>"' not in page
    assert (report.assets() / "report.js").read_text() in page and '<script type="application/json"' in page
    plain = report.shell("t", "h", "<p>no charts</p>")
    assert "<script" not in plain and "headline" not in plain.split("</style>")[1]


def test_serving_configs_parse_with_the_servers_own_loaders(tmp_path):
    from deploy.serving_config import ServerLayout, server_flags, write_configs
    from server.configs import load_batching_parameters, load_model_config_file, load_monitoring_config
    from server.flags import parse as parse_flags

    spec = load_spec(write_spec(tmp_path, "specs/digits_cnn.yaml", **{
        "serving.batching": {"enabled": True, "max_batch_size": 8, "allowed_batch_sizes": [2, 8],
                             "batch_timeout_micros": 500},
        "serving.monitoring.path": "/metrics"}))
    layout = ServerLayout.in_image(spec, config_dir=str(tmp_path / "cfg"))
    write_configs(spec, tmp_path / "cfg", layout)
    [model] = load_model_config_file(str(tmp_path / "cfg" / "models.config"))
    assert (model.name, model.base_path, model.policy) == ("digits_cnn", "/models/digits_cnn", "latest")
    batching = load_batching_parameters(str(tmp_path / "cfg" / "batching.config"))
    assert (batching.max_batch_size, batching.allowed_batch_sizes, batching.batch_timeout_micros) == (8, (2, 8), 500)
    monitoring = load_monitoring_config(str(tmp_path / "cfg" / "monitoring.config"))
    assert monitoring.prometheus_enabled and monitoring.prometheus_path == "/metrics"
    flags = server_flags(spec, layout, embedded=False)
    assert "--enable_batching=true" in flags and not any(f.startswith("--host") for f in flags)
    assert "--host=127.0.0.1" in server_flags(spec, layout, embedded=True)
    assert len([f for f in flags if f.startswith("--port=")]) == 1
    assert not any("load_threads" in f or "poll_wait" in f for f in flags)  # the server's defaults, unsaid
    loading = spec.model_copy(update={"serving": spec.serving.model_copy(
        update={"num_load_threads": 3, "file_system_poll_wait_seconds": 5})})
    parsed, _ = parse_flags(server_flags(loading, layout, embedded=True))
    assert (parsed.num_load_threads, parsed.file_system_poll_wait_seconds) == (3, 5)


def test_a_model_config_with_every_served_model(tmp_path, testdata):
    from deploy.serving_config import ServerLayout, write_configs
    from server.configs import load_model_config_file

    spec = load_spec(REPO / "specs" / "digits_and_half_plus_two.yaml")
    write_configs(spec, tmp_path / "cfg", ServerLayout.on_host(spec, tmp_path / "cfg"))
    models = load_model_config_file(str(tmp_path / "cfg" / "models.config"))
    assert [(m.name, m.base_path, m.policy) for m in models] == [
        ("digits_cnn", str(REPO / "models" / "digits_cnn"), "latest"),
        ("half_plus_two", str(REPO / "models" / "half_plus_two"), "latest")]


def test_answer_spread_says_when_no_check_could_fail():
    from loadtests.drive.payloads import answer_spread

    constant = np.full((5, 1000), 0.001)
    assert not answer_spread(constant)["informative"]
    assert "same answer for all 5 benchmark images" in answer_spread(constant)["reason"]
    assert "only one benchmark image" in answer_spread(np.eye(3)[:1])["reason"]
    varied = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    spread = answer_spread(varied)
    assert spread["informative"] and spread["distinct_top1"] == 2 and spread["max_score_spread"] == pytest.approx(0.7)
    nearly = constant.copy()
    nearly[1, 0] += 5e-4  # within ten tolerances: a wrong answer could still pass
    assert not answer_spread(nearly)["informative"]


def test_exit_codes_order_failures_then_uninformative_then_invalid():
    from loadtests.measure.session import exit_code

    base = {"model": "m", "mode": "closed", "runs": [], "failed": False, "valid": True,
            "answers": {"informative": True}}

    def code(**change) -> int:
        return exit_code(BenchSummary.made({**base, **change}))
    assert code() == 0
    assert code(valid=False) == 4
    assert code(valid=False, answers={"informative": False}) == 5
    assert code(answers={"informative": False, "accepted": True}) == 0
    assert code(failed=True, answers={"informative": False}) == 1
    assert code(thresholds_passed=False, valid=False) == 6


def test_tensor_uint8_on_this_harness_export_is_a_clear_error(tmp_path):
    from loadtests.drive.payloads import PayloadError
    from loadtests.measure.payloadsets import check_signatures
    from spec.schema import Spec

    spec = Spec.model_validate({"name": "m", "model": {"source": {"kind": "keras_application",
                                                                  "application": "MobileNetV2"}}})
    with pytest.raises(PayloadError, match="tensor_uint8 feeds a SavedModel's own uint8 image input"):
        check_signatures(spec, tmp_path, ["image_b64", "tensor_uint8"])


def test_answer_spread_of_a_signature_without_numeric_outputs_says_so():
    from loadtests.drive.payloads import answer_spread

    spread = answer_spread(np.zeros((4, 0)))
    assert not spread["informative"] and "no numeric output" in spread["reason"]


def test_payload_names_are_spelled_once_in_the_contract():
    """spec/contract.py names the payloads; the spec schema, the thresholds, the payload builders and the foreign
    (own-signature) planner all take them from there, so a new payload cannot be half-added."""
    from typing import get_args

    from loadtests.drive.foreign import IMAGE_PAYLOADS
    from loadtests.drive.payloads import GRPC_WIRE, SIGNATURE_FOR
    from spec import contract, thresholds
    from spec.benchmarkschema import BenchmarkSpec

    (literal,) = get_args(BenchmarkSpec.model_fields["payloads"].annotation)[:1]
    assert get_args(literal) == contract.PAYLOADS
    assert BenchmarkSpec().payloads == contract.DEFAULT_PAYLOADS
    assert tuple(SIGNATURE_FOR) == contract.CONTRACT_PAYLOADS and set(GRPC_WIRE) == set(contract.PAYLOADS)
    assert sorted(name for names in IMAGE_PAYLOADS.values() for name in names) == sorted(contract.PAYLOADS)
    assert thresholds.PAYLOADS is contract.PAYLOADS
