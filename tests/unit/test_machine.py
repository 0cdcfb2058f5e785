"""What the rest of the machine did during a window: busy CPU, other processes' share, steal, cgroup throttling;
the run fields and sentences made of them, and how the report and compare say a run shared its machine."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
import time
import zlib

import numpy as np
import psutil

from loadtests.analyze.machine import machine_fields, mark_slower_runs
from loadtests.commands import compare
from loadtests.drive import recorder
from loadtests.drive.recorder import (DISTURBED_PERCENT, HostCpu, cgroup_throttled_seconds, host_cpu, host_percents,
                                      other_cpu_percent, SpeedProbe, speed_slice_ms, write_samples)
from tests.conftest import REPO


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_other_processes_cpu_is_seen_and_ours_is_left_out():
    """A child that burns CPU is other work: the machine's busy CPU over the span covers what the child used."""
    child = multiprocessing.get_context("spawn").Process(target=_burn, args=(1.0,))
    begin, wall0 = host_cpu(), time.perf_counter()
    child.start()
    proc = psutil.Process(child.pid)
    used = 0.0
    while child.is_alive():
        try:
            times = proc.cpu_times()
            used = times.user + times.system
        except psutil.Error:
            break
        time.sleep(0.02)
    child.join()
    end, wall = host_cpu(), time.perf_counter() - wall0
    host = host_percents(begin, end, wall)
    child_percent = 100.0 * used / wall
    assert child_percent > 10  # the child did run
    assert host["host_cpu_percent"] >= 0.9 * child_percent, (host, child_percent)
    # the same figures with the child counted as the generator: what is left is not the child's
    other = other_cpu_percent(host, [child_percent], None)
    assert other is not None and other <= host["host_cpu_percent"] - child_percent + 1e-9


def test_host_percents_and_other_cpu_are_arithmetic_on_readings():
    begin, end = HostCpu(100.0, 5.0, 1.0), HostCpu(101.5, 5.25, 1.5)
    assert host_percents(begin, end, 2.0) == {"host_cpu_percent": 75.0, "steal_percent": 12.5,
                                              "throttled_percent": 25.0}
    assert host_percents(HostCpu(1, 0, None), HostCpu(2, 0, None), 1.0)["throttled_percent"] is None
    assert host_percents(None, end, 2.0)["host_cpu_percent"] is None
    host = {"host_cpu_percent": 150.0}
    assert other_cpu_percent(host, [60.0, None, 20.0], 40.0) == 30.0
    assert other_cpu_percent(host, [160.0], None) == 0.0  # never below zero
    assert other_cpu_percent({"host_cpu_percent": None}, [10.0], 5.0) is None


def test_cgroup_throttling_read_from_v1_and_v2(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "box").mkdir(parents=True)
    (v2 / "box" / "cpu.stat").write_text("usage_usec 100\nthrottled_usec 2500000\n")
    (tmp_path / "m2").write_text("0::/box\n")
    assert cgroup_throttled_seconds(tmp_path / "m2", v2) == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "job").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "job" / "cpu.stat").write_text("nr_periods 3\nthrottled_time 500000000\n")
    (tmp_path / "m1").write_text("4:memory:/job\n3:cpu,cpuacct:/job\n0::/\n")
    assert cgroup_throttled_seconds(tmp_path / "m1", v1) == 0.5
    (tmp_path / "m0").write_text("4:memory:/job\n")
    assert cgroup_throttled_seconds(tmp_path / "m0", v1) is None
    assert cgroup_throttled_seconds(tmp_path / "missing", v1) is None


def test_the_samples_file_carries_the_machine_and_the_run_says_when_it_was_shared(tmp_path):
    part = {"t": [0.1], "latency_ms": [1.0], "ok": [True], "image": [0], "due": [float("nan")],
            "service_ms": [1.0], "late": [False], "window_s": 1.0, "in_flight_mean": None, "cpu_percent": 50.0,
            "failures": {}}
    host = {"host_cpu_percent": 180.0, "steal_percent": 3.0, "throttled_percent": None}
    write_samples(tmp_path / "s.npz", [part], 70.0, 0.0, host=host, own_cpu_percent=5.0)
    meta = json.loads(np.load(tmp_path / "s.npz")["meta"].tobytes())
    assert meta["host_cpu_percent"] == 180.0 and meta["other_cpu_percent"] == 55.0  # 180 - 50 - 5 - 70
    fields = machine_fields(meta)
    assert fields["other_cpu_percent"] == 55.0 and fields["steal_percent"] == 3.0
    assert fields["shared_machine"] == ["other processes used 55% of a core"]
    quiet = machine_fields({"host_cpu_percent": 60.0, "other_cpu_percent": DISTURBED_PERCENT - 1,
                            "steal_percent": 0.0, "throttled_percent": 0.0})
    assert quiet["shared_machine"] == []
    stolen = machine_fields({"steal_percent": 40.0, "throttled_percent": 30.0})
    assert len(stolen["shared_machine"]) == 2 and "hypervisor" in stolen["shared_machine"][0]
    assert machine_fields({})["shared_machine"] == []  # an older samples file: nothing known, nothing said


def test_compare_and_the_terminal_summary_say_a_run_shared_its_machine(tmp_path, capsys):
    from tests.unit.test_compare import _side

    a_dir, a = _side(tmp_path, "a", [np.full(300, 10.0)])
    b_dir, b = _side(tmp_path, "b", [np.full(300, 10.0)])
    b["runs"][0]["shared_machine"] = ["other processes used 90% of a core"]
    for directory, summary in ((a_dir, a), (b_dir, b)):
        (directory / "summary.json").write_text(json.dumps(summary))
    assert compare.compare(a_dir, b_dir) == 0
    result = json.loads((b_dir / "compare.json").read_text())
    assert result["shared_machine"] == ["B: other processes used 90% of a core"]
    assert result["rows"][0]["shared_machine"] == {"a": [], "b": ["other processes used 90% of a core"]}
    assert "! shared machine" in capsys.readouterr().out
    assert "Shared machine: B: other processes used 90%" in (b_dir / "compare.html").read_text()
    (b_dir / "summary.json").write_text(json.dumps({**b, "runs": [{**b["runs"][0], "shared_machine": []}]}))
    compare.compare(a_dir, b_dir)
    assert json.loads((b_dir / "compare.json").read_text())["shared_machine"] == []
    assert "shared machine" not in capsys.readouterr().out


def test_a_server_started_by_hand_is_found_by_its_listening_port():
    """The server's CPU is the server's, not other work, even when the bench did not start it."""
    import os
    import socket

    from server.process import free_port, listening_pid

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert listening_pid(sock.getsockname()[1]) == os.getpid()
    assert listening_pid(free_port()) is None


def test_a_repeat_during_which_the_machine_ran_slower_than_during_the_quickest_is_said_to_have_shared_it():
    cell = {"protocol": "rest", "payload": "image_b64", "level": 1}
    runs = [{**cell, "machine_probe_ms": 1.01, "shared_machine": []},
            {**cell, "machine_probe_ms": 1.30, "shared_machine": []},
            {**cell, "machine_probe_ms": 1.06, "shared_machine": ["other processes used 30% of a core"]},
            {**cell, "level": 4, "machine_probe_ms": 1.6, "shared_machine": []},  # another load: not compared
            {**cell, "p50_ms": 1.0}]  # too short to time
    mark_slower_runs(runs)
    assert runs[0]["shared_machine"] == [] and runs[3]["shared_machine"] == [] and "shared_machine" not in runs[4]
    assert runs[1]["shared_machine"] == ["the machine ran a fixed CPU workload 29% slower during this run than "
                                         "during its quickest repeat"]
    assert runs[2]["shared_machine"] == ["other processes used 30% of a core"]  # 5% slower: within DRIFT_PERCENT
    mark_slower_runs(runs)  # a summary written again says it once
    assert len(runs[1]["shared_machine"]) == 1


def test_the_speed_probe_times_slices_while_it_is_open():
    with SpeedProbe(every_s=0.01) as probe:
        time.sleep(0.3)
    count = len(probe.slices)
    assert count >= 3 and probe.median_ms == float(np.median(probe.slices)) and probe.median_ms > 0
    time.sleep(0.05)
    assert len(probe.slices) == count  # the thread stopped with the run
    with SpeedProbe(every_s=10) as short:
        pass
    assert short.median_ms is None  # nothing timed: no figure, not a made-up one


def test_the_speed_probe_times_the_same_work_in_every_process():
    """Two benches are two processes: the probe's data must be the same bytes in each, or their times would not
    compare."""
    here = hashlib.sha256(recorder._probe_data()).hexdigest()
    there = subprocess.run([sys.executable, "-c", "import hashlib; from loadtests.drive import recorder; "
                            "print(hashlib.sha256(recorder._probe_data()).hexdigest())"],
                           capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    assert here == there and len(recorder._probe_data()) == recorder.PROBE_BYTES
    assert 0.05 < len(zlib.compress(recorder._probe_data(), 6)) / recorder.PROBE_BYTES < 0.9  # deflate has work to do
    assert 0 < speed_slice_ms() < 60_000
