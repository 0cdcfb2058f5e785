"""Before the sweep: every image over every protocol and payload must give the in-process answer.

Top-1 classes must be equal and every score within SCORE_TOLERANCE of the in-process result (so
also of each other). A benchmark of a deployment that answers differently per protocol would
compare things that are not the same; it stops here instead.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from typing import Sequence

from loadtests.drive import wire
from loadtests.drive.payloads import PayloadSet, wire_name
from loadtests.measure.run import PROTOCOL_LABEL
from spec.errors import MISMATCH, HarnessError


class MismatchError(HarnessError):
    """A protocol or payload answers differently from the model in-process (or not at all)."""
    exit_code = MISMATCH
    prefix = "correctness check failed, no benchmark was run: "


def _rest_answer(rest_url: str, model: str, body: bytes) -> bytes:
    request = urllib.request.Request(f"{rest_url}/v1/models/{model}:predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise MismatchError(f"REST :predict answered HTTP {error.code}: {error.read()[:300].decode(errors='replace')}")
    except (urllib.error.URLError, OSError) as error:
        raise MismatchError(f"REST :predict at {rest_url} failed: {error}") from None


def check(payloads: PayloadSet, rest_url: str, grpc_target: str, model: str,
          runs: Sequence[tuple[str, str]]) -> list[dict]:
    """One entry per (protocol, payload): images checked and the largest score difference.

    Raises MismatchError naming the protocol, payload and image at the first disagreement.
    """
    import grpc

    results = []
    with grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                     ("grpc.max_send_message_length", 64 << 20)]) as channel:
        predict = wire.predict_method(channel)
        for protocol, payload in runs:
            where = f"{PROTOCOL_LABEL[protocol]} {wire_name(protocol, payload)}"
            worst = 0.0
            for i in range(len(payloads)):
                try:
                    if protocol == "rest":
                        answer = payloads.answer_rest(_rest_answer(rest_url, model, payloads.rest_body(payload, i)))
                    else:
                        try:
                            answer = payloads.answer_grpc(predict(payloads.grpc_request(payload, i, model),
                                                                  timeout=60))
                        except grpc.RpcError as error:
                            raise MismatchError(f"{where}: Predict failed: {error.code().name}: "
                                                f"{error.details()}") from None
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    raise MismatchError(f"{where}, request {i}: the answer cannot be read ({type(exc).__name__}: "
                                        f"{exc})") from None
                diff, problem = payloads.compare(i, answer)
                if problem:
                    raise MismatchError(f"{where}, {problem}")
                worst = max(worst, diff)
            results.append({"protocol": protocol, "payload": payload, "wire": wire_name(protocol, payload),
                            "images": len(payloads), "max_abs_diff": worst, "top1_equal": True})
    return results
