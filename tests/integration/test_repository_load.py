"""Repository._load, case by case: retries, a warmup that fails, and a shutdown while waiting to retry."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

from server.configs import ModelConfig
from server.errors import DataLoss
from server.metrics import Metrics
from server.model import LoadOptions
from server.repository import Repository

pytestmark = pytest.mark.slow


def _repository(base, warmup=None, retries=3, interval_s=60.0) -> tuple[Repository, Metrics]:
    metrics = Metrics()
    repository = Repository([ModelConfig(name="half", base_path=str(base))], LoadOptions(), poll_seconds=0,
                            warmup=warmup, max_load_retries=retries, retry_interval_s=interval_s, metrics=metrics)
    return repository, metrics


def _start_in_thread(repository: Repository) -> tuple[threading.Thread, list]:
    raised: list = []

    def run():
        try:
            repository.start()
        except BaseException as exc:  # noqa: BLE001  (what the old loop raised: UnboundLocalError)
            raised.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_warmup_that_fails_never_makes_the_version_available(testdata):
    loaded_models = []

    def warmup(name, version, model):
        loaded_models.append(model)
        raise DataLoss("warmup record 0 is corrupt")

    repository, _ = _repository(testdata / "saved_model_half_plus_two_cpu", warmup, retries=2, interval_s=0.01)
    repository.start()
    try:
        [state] = repository.status("half")
        assert state.state == "END" and state.error_message == "warmup record 0 is corrupt"
        assert len(loaded_models) == 3  # one attempt and two retries, each warmed up
        assert all(model._session is None for model in loaded_models)  # every one closed, none served
    finally:
        repository.stop()


def test_a_shutdown_while_waiting_to_retry_ends_the_load_with_its_error(testdata, tmp_path):
    broken = tmp_path / "half" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    repository, metrics = _repository(tmp_path / "half", retries=5, interval_s=60.0)
    thread, raised = _start_in_thread(repository)
    _wait_for(lambda: 'status="fail"} 1' in metrics.render())  # the first attempt failed; now a 60 s wait
    stopped = time.monotonic()
    repository.stop()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - stopped < 30  # it did not sit out the retry interval
    assert raised == []
    [state] = repository.status("half")
    assert state.state == "END" and state.error_message  # the load's own error, not a crash
    assert 'status="fail"} 1' in metrics.render()  # no further attempt after the shutdown


def test_a_shutdown_after_a_failed_warmup_does_not_serve_the_unwarmed_model(testdata, tmp_path):
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", tmp_path / "half")
    warmed = threading.Event()

    def warmup(name, version, model):
        warmed.set()
        raise DataLoss("warmup failed")

    repository, _ = _repository(tmp_path / "half", warmup, retries=5, interval_s=60.0)
    thread, raised = _start_in_thread(repository)
    assert warmed.wait(60)
    time.sleep(0.2)  # inside the wait before the next attempt
    repository.stop()
    thread.join(30)
    assert not thread.is_alive() and raised == []
    [state] = repository.status("half")
    assert state.state == "END" and state.error_message == "warmup failed"


def test_a_load_that_succeeds_on_a_retry_is_available(testdata, tmp_path):
    attempts = []

    def warmup(name, version, model):
        attempts.append(model)
        if len(attempts) == 1:
            raise DataLoss("first warmup fails")

    repository, _ = _repository(testdata / "saved_model_half_plus_two_cpu", warmup, retries=2, interval_s=0.01)
    repository.start()
    try:
        [state] = repository.status("half")
        assert state.state == "AVAILABLE" and len(attempts) == 2
        assert attempts[0]._session is None and attempts[1]._session is not None
    finally:
        repository.stop()


@pytest.mark.parametrize("threads, most", [(0, 1), (2, 2)])
def test_num_load_threads_loads_that_many_models_at_once(testdata, threads, most):
    """--num_load_threads=0 loads one model after another; N loads up to N at once (3 models, 2 threads: 2)."""
    lock, overlapped = threading.Lock(), threading.Event()
    loading = {"now": 0, "most": 0}

    def warmup(name, version, model):  # runs inside each load
        with lock:
            loading["now"] += 1
            loading["most"] = max(loading["most"], loading["now"])
            if loading["now"] >= 2:
                overlapped.set()
        if threads:
            overlapped.wait(30)  # a parallel load stays in until a second one overlaps it
        with lock:
            loading["now"] -= 1

    names = ("a", "b", "c")
    base = str(testdata / "saved_model_half_plus_two_cpu")
    repository = Repository([ModelConfig(name=n, base_path=base) for n in names], LoadOptions(), poll_seconds=0,
                            warmup=warmup, load_threads=threads)
    repository.start()
    try:
        assert [repository.status(n)[0].state for n in names] == ["AVAILABLE"] * 3
        assert loading["most"] == most
    finally:
        repository.stop()
