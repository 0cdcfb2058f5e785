"""gRPC TLS through TF Serving's --ssl_config_file (SSLConfig text proto, PEM inline), with certificates made in the
test by openssl: server TLS, then mutual TLS (client_verify), and clear startup errors for unusable configs."""
from __future__ import annotations

import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.conftest import REPO
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.slow


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl; .ci/run installs it)")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=tfserve-bench test CA", cwd=d)
    for name, extension in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return {path.name: path.read_text() for path in d.iterdir() if path.suffix in (".pem", ".key")}


def _ssl_config(tmp_path, pki, client_verify: bool):
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    path = tmp_path / "ssl.config"
    lines = [f"server_key: {quoted(pki['server.key'])}", f"server_cert: {quoted(pki['server.pem'])}"]
    if client_verify:
        lines += [f"custom_ca: {quoted(pki['ca.pem'])}", "client_verify: true"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _predict(channel) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.0]], np.float32)))
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return tf.make_ndarray(answer.outputs["y"]).ravel().tolist()


def _server(testdata, config):
    return ServerProcess("--model_name=half", f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
                         f"--ssl_config_file={config}")


def test_grpc_over_tls_and_plaintext_is_refused(tmp_path, pki, testdata):
    server = _server(testdata, _ssl_config(tmp_path, pki, client_verify=False))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].encode())
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            assert _predict(channel) == [2.5, 3.0]
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
            _predict(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        status, body = server.http("POST", "/v1/models/half:predict", {"instances": [1.0]})
        assert (status, body) == (200, {"predictions": [2.5]})  # REST has no TLS in TF Serving either
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate_signed_by_custom_ca(tmp_path, pki, testdata):
    server = _server(testdata, _ssl_config(tmp_path, pki, client_verify=True))
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].encode())
        with grpc.secure_channel(server.grpc_target, anonymous) as channel, pytest.raises(grpc.RpcError) as refused:
            _predict(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        known = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].encode(),
                                             private_key=pki["client.key"].encode(),
                                             certificate_chain=pki["client.pem"].encode())
        with grpc.secure_channel(server.grpc_target, known) as channel:
            assert _predict(channel) == [2.5, 3.0]
    finally:
        server.stop()


@pytest.mark.parametrize("config, extra, message", [
    ('server_key: "/etc/ssl/private/key.pem"\nserver_cert: "/etc/ssl/cert.pem"\n', [],
     "is not PEM text (no -----BEGIN line)"),
    ('server_cert: "-----BEGIN CERTIFICATE-----"\n', [], "server_key and server_cert (PEM text) are both required"),
    ('server_key: "-----BEGIN"\nserver_cert: "-----BEGIN"\nclient_verify: true\n', [], "client_verify needs custom_ca"),
    ("server_key: 3 4\n", [], "Invalid protobuf file"),
    ('server_key: "-----BEGIN"\nserver_cert: "-----BEGIN"\n', ["--use_alts_credentials=true"],
     "Either use_alts_credentials must be false or ssl_config_file must be empty."),
])
def test_unusable_ssl_configs_stop_the_server_with_one_line(tmp_path, testdata, config, extra, message):
    path = tmp_path / "ssl.config"
    path.write_text(config)
    result = subprocess.run([sys.executable, "-m", "server", f"--port={free_port()}",
                             f"--rest_api_port={free_port()}", "--model_name=half",
                             f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
                             f"--ssl_config_file={path}", *extra], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 255 and "Failed to start server. Error: " in result.stdout, result
    assert message in result.stdout and "Traceback" not in result.stdout + result.stderr, result
