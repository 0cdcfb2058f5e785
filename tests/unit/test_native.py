"""The C skeleton check of the REST fast path: its verdicts, the same answers as the pure-Python path, the build."""
from __future__ import annotations

import ctypes
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import native
from server.tensors import fastpath, json_in


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here (CI installs gcc): the server runs its pure-Python check instead")
    loaded = native.load(native.build(tmp_path_factory.mktemp("native") / "libskeleton.so"))
    assert loaded is not None
    return loaded


def _shape(library, body: bytes, max_dims: int = fastpath.MAX_RANK):
    dims = (ctypes.c_int64 * fastpath.MAX_RANK)()
    rank = library.regular_shape(body, len(body), dims, max_dims)
    return None if rank < 0 else tuple(dims[:rank])


@pytest.mark.parametrize("body, shape", [
    (b'{"instances": [[1, 2], [3, 4], [5, 6]]}', (3, 2)),
    (b'{"signature_name": "s", "inputs": [[[1.5e-3], [2]]]}', (1, 2, 1)),   # the comma before the array
    (b'{"instances": [7, 8, 9], "signature_name": "s"}', (3,)),             # the comma after it
    (b'{"instances": [[1, 2], [3]]}', None),                                 # ragged
    (b'{"instances": [[1, 2], 3]}', None),                                   # an array and a leaf side by side
    (b'{"instances": [[[1], [2]], [3, 4]]}', None),                          # leaves at two depths
    (b'{"instances": [[1, 2]], "signature_name": "a]b"}', None),             # a bracket in a string
    (b'{"instances": [[1, 2], [3, 4]}', None),                               # unclosed (never parsed, but safe)
    (b'{"instances": [1]]}', None),                                          # one bracket too many
    (b'{"a": [1], "b": [2]}', None),                                         # two arrays
    (b'[' * 65 + b'1' + b']' * 65, None),                                    # deeper than MAX_RANK
])
def test_regular_shape_verdicts(library, body, shape):
    assert _shape(library, body) == shape
    # the threaded entry points give the same answer
    dims = (ctypes.c_int64 * fastpath.MAX_RANK)()
    rank = library.regular_shape_finish(library.regular_shape_start(body, len(body)), dims, fastpath.MAX_RANK)
    assert (None if rank < 0 else tuple(dims[:rank])) == shape


def test_rank_above_the_callers_room_is_refused(library):
    assert _shape(library, b"[[[1]]]", max_dims=2) is None
    assert _shape(library, b"[[[1]]]", max_dims=3) == (1, 1, 1)


# nested lists of numbers, sometimes regular, sometimes not (ragged rows, leaves beside arrays, empty arrays)
_leaf = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False, width=32))
_nested = st.recursive(st.lists(_leaf, min_size=0, max_size=4),
                       lambda inner: st.lists(st.one_of(inner, _leaf), min_size=1, max_size=4), max_leaves=60)
_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
_regular = st.builds(
    lambda shape, seed: np.random.default_rng(seed).standard_normal(shape).astype(np.float32).tolist(),
    _shapes, st.integers(0, 9))


def _innermost_rows(value: list) -> list:
    return [value] if not isinstance(value[0], list) else [row for item in value for row in _innermost_rows(item)]


@st.composite
def _ragged_same_count(draw):
    """A regular array with one leaf moved from one innermost row to another: the leaf count, and often the
    shape along the first elements, are still those of a regular array; only the skeleton tells."""
    shape = draw(_shapes.filter(lambda s: len(s) >= 2 and s[-1] >= 2 and np.prod(s[:-1]) >= 2))
    value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape).tolist()
    rows = _innermost_rows(value)
    donor = draw(st.integers(0, len(rows) - 1))
    taker = draw(st.integers(0, len(rows) - 2))
    taker += taker >= donor
    rows[taker].append(rows[donor].pop())
    return value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instances=st.one_of(_nested, _regular, _ragged_same_count()),
       signature=st.sampled_from([None, "s", "a,b", "[x]"]), padding=st.integers(0, 3))
def test_c_and_python_checks_give_the_same_tensors(library, monkeypatch, instances, signature, padding):
    document = {"instances": instances}
    if signature is not None:
        document["signature_name"] = signature
    body = (json.dumps(document) + " " * fastpath.FAST_PATH_MIN_BYTES * padding).encode()
    if len(body) < fastpath.FAST_PATH_MIN_BYTES:
        body += b" " * (fastpath.FAST_PATH_MIN_BYTES - len(body))   # whitespace keeps it valid JSON
    results = []
    for check in (library, False):                                # False: the pure-Python path
        monkeypatch.setattr(fastpath, "_native", check)
        fast = fastpath.fast_body(body)
        results.append(None if fast is None else fast.array(1))
    c_result, python_result = results
    assert (c_result is None) == (python_result is None)
    if c_result is not None:
        np.testing.assert_array_equal(c_result, python_result)
        np.testing.assert_array_equal(c_result, json_in.rows_to_array(instances, 1))  # and the exact path agrees


def test_a_missing_compiler_is_reported_not_raised(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no-such-cc"):
        native.build(tmp_path / "lib.so")
    monkeypatch.setattr(native, "LIBRARY", tmp_path / "lib.so")
    assert native.main() == 0
    assert "C helpers not built" in capsys.readouterr().err and not (tmp_path / "lib.so").exists()


def test_a_library_for_another_system_is_ignored(tmp_path):
    bogus = tmp_path / "libskeleton.so"
    bogus.write_bytes(b"not an ELF file")
    assert native.load(bogus) is None and native.load(tmp_path / "absent.so") is None


def test_big_bodies_are_checked_beside_the_parse(library, monkeypatch):
    monkeypatch.setattr(fastpath, "_native", library)
    array = np.random.default_rng(2).standard_normal((1, 160, 160, 3)).astype(np.float32)
    body = json.dumps({"instances": array.tolist()}).encode()
    assert len(body) >= fastpath.PARALLEL_CHECK_MIN_BYTES
    fast = fastpath.fast_body(body)
    assert fast.regular_shape == (1, 160, 160, 3)  # decided on the other thread, before array() was asked
    np.testing.assert_array_equal(fast.array(1), array)
    ragged = array.tolist()
    ragged[0][5][7].append(ragged[0][5][8].pop())  # same leaf count, one pixel with 4 values and one with 2
    fast = fastpath.fast_body(json.dumps({"instances": ragged}).encode())
    assert fast.regular_shape == () and fast.array(1) is None


def test_small_bodies_are_checked_after_the_parse_only_when_numeric(library, monkeypatch):
    monkeypatch.setattr(fastpath, "_native", library)
    parsed = []
    monkeypatch.setattr(fastpath, "_recognise", lambda body, real=fastpath._recognise: parsed.append(1) or real(body))
    for body in ({"instances": [{"b64": "QUJD" * 20000}]}, {"signature_name": "x", "instances": [["ab" * 9000]]},
                 {"inputs": {"image_bytes": [{"b64": "QUJD" * 20000}]}}, {"instances": [[{"x": 1}] * 3000]}):
        # strings and objects are not for the fast path: bailed out from the body's head, never parsed twice
        assert fastpath.fast_body(json.dumps(body).encode()) is None and parsed == [], body
    numbers = json.dumps({"instances": [[0.5] * 5000]}).encode()
    fast = fastpath.fast_body(numbers)
    assert fast.regular_shape is None and fast.array(1).shape == (1, 5000) and fast.regular_shape == (1, 5000)
