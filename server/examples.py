"""REST classify/regress bodies -> serialized tf.Examples (http_rest_api_util.cc / json_tensor.cc rules).

The first value of a feature decides its kind: a string or {"b64"} is bytes_list, a number with a
decimal point or exponent is float_list, an integer or a bool is int64_list; later values must match.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from server.errors import InvalidArgument
from server.tensors.json_in import compact, is_b64, json_type

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _kind_of(value: Any, feature: str) -> str:
    if isinstance(value, str) or is_b64(value):
        return "bytes_list"
    if isinstance(value, bool):
        return "int64_list"
    if isinstance(value, float):
        return "float_list"
    if isinstance(value, int):
        if value >= 2**63 or value < -2**63:
            raise InvalidArgument(f"Only int64 is supported for integer features, feature: {feature} value: {value}")
        return "int64_list"
    raise InvalidArgument(f"Feature: {feature} has element with unexpected JSON type: {json_type(value)}")


def _add_feature(example, feature: str, value: Any) -> None:
    values = value if isinstance(value, list) else [value]
    if not values:
        example.features.feature[feature].SetInParent()
        return
    kind = _kind_of(values[0], feature)
    target = getattr(example.features.feature[feature], kind).value
    for item in values:
        if _kind_of(item, feature) != kind:
            raise InvalidArgument(f"Unexpected element type in feature: {feature} expecting type: {_KIND_NAMES[kind]}")
        if kind == "bytes_list":
            if isinstance(item, str):
                target.append(item.encode("utf-8"))
            else:
                try:
                    target.append(base64.b64decode(item["b64"], validate=True))
                except (binascii.Error, ValueError):
                    raise InvalidArgument(f"Unable to base64 decode: {item['b64'][:64]}") from None
        else:
            target.append(int(item) if kind == "int64_list" else item)


def example_from_json(value: Any):
    from tensorflow.core.example import example_pb2

    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {compact(value)}")
    example = example_pb2.Example()
    for feature, feature_value in value.items():
        _add_feature(example, feature, feature_value)
    return example


def examples_from_request(doc: dict, method: str) -> list[bytes]:
    """{"examples": [...], "context": {...}} -> serialized Examples (context merged into each)."""
    examples = doc.get("examples")
    if examples is None:
        raise InvalidArgument(f"JSON Value: {json.dumps(doc)[:256]} When method is {method}, key 'examples' is "
                              "expected and was not found")
    if not isinstance(examples, list):
        raise InvalidArgument("JSON Value: 'examples' key must be an array")
    context = b""
    if "context" in doc:
        context = example_from_json(doc["context"]).SerializeToString()
    return [context + example_from_json(item).SerializeToString() for item in examples]
