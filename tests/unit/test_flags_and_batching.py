"""TF-style flag parsing and the batcher's merge/split/limits (with a fake model runner)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from server.batching import Batcher
from server.configs import BatchingParameters, ConfigError, load_batching_parameters
from server.errors import InvalidArgument, Unavailable
from server.flags import Flags, UsageError, parse
from server.metrics import Metrics


def test_flags_follow_tensorflow_rules():
    flags, unknown = parse(["--port=9000", "--enable_batching", "--enable_model_warmup=false", "--model_name=m",
                            "--rest_api_port", "8501", "--bogus=1"])
    assert flags.port == 9000 and flags.enable_batching and not flags.enable_model_warmup and flags.model_name == "m"
    assert flags.rest_api_port == 0  # `--flag value` is not parsed, as in TF
    assert unknown == ["--rest_api_port", "8501", "--bogus=1"]
    assert Flags().host == "127.0.0.1" and Flags().port == 8500 and Flags().model_name == "default"


@pytest.mark.parametrize("arg", ["--port=abc", "--enable_batching=maybe", "--help"])
def test_bad_flag_values_are_usage_errors(arg):
    with pytest.raises(UsageError):
        parse([arg])


class FakeModel:
    def __init__(self):
        self.batches = []
        self.lock = threading.Lock()

    def __call__(self, model, signature, inputs, outputs):
        with self.lock:
            self.batches.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}


class Sig:
    name = "serving_default"


def test_concurrent_requests_are_merged_padded_and_split_exactly():
    fake, metrics = FakeModel(), Metrics()
    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1,
                                         max_enqueued_batches=10, allowed_batch_sizes=(4, 8),
                                         thread_pool_name="pool_a"), fake, metrics)
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(batcher, None, Sig, {"x": np.full((1 + i % 2, 3), i, np.float32)}, ["y"])
                       for i in range(6)]
            results = [f.result() for f in futures]
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["y"], np.full((1 + i % 2, 3), 2 * i, np.float32))
        assert all(size in (4, 8) for size in fake.batches)  # padded to an allowed size
        assert len(fake.batches) < 6  # some requests shared a run
        text = metrics.render()
        assert f":tensorflow:serving:batching_session:wrapped_run_count{{}} {len(fake.batches)}" in text
        assert ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name="pool_a"} 6' in text
        # Exponential(100, 1.2, 52) µs: the first limit is 100, the last below +Inf is 100 * 1.2**51
        assert 'queuing_latency_bucket{thread_pool_name="pool_a",le="100"}' in text
        assert f'queuing_latency_bucket{{thread_pool_name="pool_a",le="{100 * 1.2 ** 51:.6g}"}}' in text
        # TF Serving's batch-size histograms (batching_util.h): Exponential(1, 2, 14), no model label
        prefix = ":tensorflow:serving:batching_session:"
        assert f"{prefix}input_batch_size_count{{}} 6" in text and f"{prefix}input_batch_size_sum{{}} 9" in text
        assert f"{prefix}processed_batch_size_count{{}} {len(fake.batches)}" in text
        assert f"{prefix}processed_batch_size_sum{{}} {sum(fake.batches)}" in text
        padding = {size: sum(1 for b in fake.batches if b == size) for size in set(fake.batches)}
        for size, runs in padding.items():
            assert f'{prefix}padding_size_count{{execution_batch_size="{size}"}} {runs}' in text
        padding_sum = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith(f"{prefix}padding_size_sum"))
        assert padding_sum == sum(fake.batches) - 9
        # a value equal to a limit counts in the next bucket, as TF's Histogram::Add (upper_bound) does
        fours = sum(1 for b in fake.batches if b == 4)
        assert f'{prefix}processed_batch_size_bucket{{le="4"}} 0' in text
        assert f'{prefix}processed_batch_size_bucket{{le="8"}} {fours}' in text
        assert f'{prefix}processed_batch_size_bucket{{le="8192"}} {len(fake.batches)}' in text
    finally:
        batcher.stop()


def test_batcher_limits():
    batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=1,
                                         max_enqueued_batches=1), FakeModel())
    try:
        with pytest.raises(InvalidArgument, match="Task size 5 is larger than maximum input batch size 4"):
            batcher(None, Sig, {"x": np.zeros((5, 1))}, ["y"])
        with pytest.raises(InvalidArgument, match="equal 0th-dimension size"):
            batcher(None, Sig, {"x": np.zeros((2, 1)), "z": np.zeros((3, 1))}, ["y"])
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(batcher, None, Sig, {"x": np.zeros((3, 1))}, ["y"])  # waits for its timeout
            import time
            deadline = time.monotonic() + 5
            while not batcher._queues and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(Unavailable, match="queue to which this task was submitted is full"):
                batcher(None, Sig, {"x": np.zeros((2, 1))}, ["y"])
            batcher.stop()  # flushes the queued batch
            assert waiting.result()["y"].shape == (3, 1)
    finally:
        batcher.stop()


def test_batching_parameters_file(tmp_path, testdata):
    params = load_batching_parameters(str(testdata / "batching_config.txt"))
    assert (params.max_batch_size, params.num_batch_threads, params.max_enqueued_batches) == (128, 8, 1000000)
    assert params.thread_pool_name == "batch_threads"
    assert load_batching_parameters(None).thread_pool_name == "model_server_batch_threads"
    named = tmp_path / "named.txt"
    named.write_text('thread_pool_name { value: "mine" }\n')
    assert load_batching_parameters(str(named)).thread_pool_name == "mine"
    bad = tmp_path / "b.txt"
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(ConfigError, match="Last entry in allowed_batch_sizes must match max_batch_size"):
        load_batching_parameters(str(bad))
    bad.write_text("max_batch_size: 8\n")
    with pytest.raises(ConfigError, match="Invalid protobuf file"):
        load_batching_parameters(str(bad))


def test_padding_variable_length_inputs_is_said_to_have_no_effect(tmp_path, caplog):
    """TF Serving pads inputs of different lengths to batch them; ours batches them in separate queues, and says
    so at startup instead of accepting the setting silently."""
    from server.app import Server

    file = tmp_path / "batching.txt"
    for pad, warned in (("true", True), ("false", False)):
        file.write_text(f"max_batch_size {{ value: 8 }}\npad_variable_length_inputs: {pad}\n")
        flags, _ = parse(["--model_name=m", f"--model_base_path={tmp_path}", "--enable_batching=true",
                          f"--batching_parameters_file={file}"])
        caplog.clear()
        with caplog.at_level("WARNING", logger="server"):
            server = Server(flags)
        assert server.batcher is not None
        server.batcher.stop()
        said = [r.getMessage() for r in caplog.records if "pad_variable_length_inputs" in r.getMessage()]
        assert bool(said) == warned, said
        if warned:
            assert "has no effect in the embedded server" in said[0] and str(file) in said[0]
