"""--profile's messages (written without TensorFlow in the load generator) and its checks before anything runs."""
from __future__ import annotations

import pytest

from loadtests.__main__ import check_profile
from loadtests.drive import profiling
from loadtests.measure.session import Generators
from spec.errors import UsageError
from spec.loader import load_spec
from tests.conftest import REPO


def test_the_requests_are_what_the_servers_profiler_service_reads():
    from server.profiler import ProfilerService

    messages = ProfilerService().messages  # the embedded server's classes, built from the service's field numbers
    request = messages["ProfileRequest"].FromString(
        profiling.profile_request(123_456, "/r/plugins/profile", "grpc-image_bytes-u1"))
    assert (request.duration_ms, request.repository_root, request.session_id, request.host_name) == (
        123_456, "/r/plugins/profile", "grpc-image_bytes-u1", "server")
    assert messages["TerminateRequest"].FromString(profiling.terminate_request("s1")).session_id == "s1"
    for empty in (False, True):
        response = messages["ProfileResponse"](empty_trace=empty)
        response.tool_data.add(name="x", data=b"\x38\x01")  # the flag's bytes inside another field do not count
        assert profiling.empty_trace(response.SerializeToString()) is empty
    assert profiling.trace_path(REPO / "r", "s1") == REPO / "r" / "plugins" / "profile" / "s1" / "server.xplane.pb"


def test_profile_refuses_a_server_whose_files_it_cannot_read_before_anything_runs():
    spec = load_spec(REPO / "specs" / "digits_cnn.yaml")
    check_profile(spec, "embedded", Generators())
    with pytest.raises(UsageError, match="--backend embedded"):
        check_profile(spec, "docker", Generators())
    with pytest.raises(UsageError, match="drop --target-host"):
        check_profile(spec, "embedded", Generators(target_host="10.0.0.5"))
