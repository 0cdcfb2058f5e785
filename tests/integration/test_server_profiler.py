"""tensorflow.ProfilerService on the gRPC port, as TF Serving's --enable_profiler: TensorFlow's own client call
(`tf.profiler.experimental.client.trace("grpc://host:port", ...)`) captures the serving process while it answers."""
from __future__ import annotations

import json
import threading

import grpc
import pytest
import tensorflow as tf

from server.profiler import SERVICE, ProfilerService, has_events
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def half(testdata):
    return testdata / "saved_model_half_plus_two_cpu"


def _load(server: ServerProcess, stop: threading.Event, answers: list) -> None:
    while not stop.is_set():
        status, body = server.http("POST", "/v1/models/half:predict", json.dumps({"instances": [1.0, 2.0]}).encode())
        answers.append((status, body))  # parsed by ServerProcess.http


def test_tensorflows_trace_call_on_the_grpc_port_captures_the_serving_process(half, tmp_path):
    server = ServerProcess("--model_name=half", f"--model_base_path={half}", log_dir=tmp_path)
    stop, answers = threading.Event(), []
    load = threading.Thread(target=_load, args=(server, stop, answers))
    try:
        load.start()
        tf.profiler.experimental.client.trace(f"grpc://{server.grpc_target}", str(tmp_path / "tb"), 1500)
        stop.set()
        load.join()
        (trace,) = (tmp_path / "tb" / "plugins" / "profile").glob("*/*.xplane.pb")  # where TensorBoard looks
        assert trace.name == f"{server.grpc_target.replace(':', '_')}.xplane.pb"
        data = trace.read_bytes()
        assert has_events(data) and b"SessionRun" in data and b"Mul" in data, len(data)  # the model's runs
        assert answers and all(answer == (200, {"predictions": [2.5, 3.0]}) for answer in answers)

        with grpc.insecure_channel(server.grpc_target) as channel:  # the service's own refusals, as TensorFlow's
            raw = channel.unary_unary(f"/{SERVICE}/Profile")
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\x08\xe8\x07", timeout=30)  # duration_ms 1000, but nowhere to write the trace
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "repository_root and session_id" in refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                raw(b"\x08\xe8\x07*\x04/tmp2\x02..", timeout=30)  # a session_id that climbs out of the repository
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one path component" in \
                refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(f"/{SERVICE}/Monitor")(b"", timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        stop.set()
        server.stop()


def test_a_second_trace_meanwhile_is_unavailable_and_the_flag_turns_the_service_off(half, tmp_path):
    messages = ProfilerService().messages

    def request(duration_ms: int, session_id: str) -> bytes:
        return messages["ProfileRequest"](duration_ms=duration_ms, repository_root=str(tmp_path / "tb"),
                                          session_id=session_id, host_name="here").SerializeToString()

    server = ServerProcess("--model_name=half", f"--model_base_path={half}", log_dir=tmp_path)
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            profile = channel.unary_unary(f"/{SERVICE}/Profile")
            # two sessions of 4 s, the second sent while the first is in flight: whichever reaches the server
            # second is refused (a request can overtake the other on the way in, so either one may be)
            sessions = [profile.future(request(4000, name), timeout=60) for name in ("first", "second")]
            outcomes = []
            for session in sessions:
                try:
                    outcomes.append(messages["ProfileResponse"].FromString(session.result()))
                except grpc.RpcError as exc:
                    outcomes.append(exc)
            refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
            assert len(refused) == 1, outcomes
            assert refused[0].code() == grpc.StatusCode.UNAVAILABLE
            assert "Another profiling session active" in refused[0].details()
    finally:
        server.stop()
    off = ServerProcess("--model_name=half", f"--model_base_path={half}", "--enable_profiler=false", log_dir=tmp_path)
    try:
        with grpc.insecure_channel(off.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(f"/{SERVICE}/Profile")(request(1000, "off"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        off.stop()
