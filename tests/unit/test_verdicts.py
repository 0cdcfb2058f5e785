"""The load test's answer checks remember verdicts per distinct answer, and still catch every wrong one."""
from __future__ import annotations

import json

import numpy as np

from benchmarks.standin import synthetic_payloads
from loadtests.drive.payloads import Verdicts


def _body(row) -> bytes:
    return json.dumps({"predictions": [list(map(float, row))]}).encode()


def test_a_wrong_answer_is_wrong_every_time_and_each_distinct_answer_is_checked(tmp_path):
    payloads, _ = synthetic_payloads(tmp_path)  # image i's right answer is class i
    verdicts = Verdicts(payloads)
    right0, right1 = _body(payloads.expected[0]), _body(payloads.expected[1])
    assert verdicts.rest(0, right0) is None
    wrong = [verdicts.rest(0, right1) for _ in range(3)]  # image 1's answer to image 0's request
    assert all(w and "top-1 class 1" in w for w in wrong)
    assert verdicts.rest(1, right1) is None  # the same bytes, right for the request they answer
    assert verdicts.checked == 3  # right0, right1 for 0, right1 for 1: repeats were not parsed again
    assert "unreadable" in verdicts.rest(0, b"{not json")
    nudged = payloads.expected[0].copy()
    nudged[0] -= 0.0001  # other bytes, same top-1: checked, and right
    assert verdicts.rest(0, _body(nudged)) is None and verdicts.checked == 5


def test_grpc_answers_are_checked_from_their_bytes(tmp_path):
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    payloads, _ = synthetic_payloads(tmp_path)
    verdicts = Verdicts(payloads)

    def message(row) -> bytes:
        response = predict_pb2.PredictResponse()
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=np.asarray([row], np.float32).tobytes())
        tensor.tensor_shape.dim.add(size=1)
        tensor.tensor_shape.dim.add(size=len(row))
        response.outputs["probabilities"].CopyFrom(tensor)
        return response.SerializeToString()

    assert verdicts.grpc(2, message(payloads.expected[2])) is None
    assert "top-1 class 3" in verdicts.grpc(2, message(payloads.expected[3]))
    assert "unreadable PredictResponse" in verdicts.grpc(2, b"\xff\xff\xff")


def test_answers_that_differ_every_time_are_all_checked_in_bounded_memory(tmp_path, monkeypatch):
    payloads, _ = synthetic_payloads(tmp_path)
    monkeypatch.setattr(Verdicts, "KEPT", 3)
    verdicts = Verdicts(payloads)
    for k in range(10):
        row = payloads.expected[0].copy()
        row[5] += k * 1e-4
        assert verdicts.rest(0, _body(row)) is None
    assert verdicts.checked == 10 and len(verdicts.known) <= 3
