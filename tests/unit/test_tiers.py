"""make test's tiers (tests/tiers.py): which pytest runs, and the exit code they add up to."""
from __future__ import annotations

import importlib.util
import pathlib

from tests.tiers import combined, compile_sources, longest_first, tiers


def test_waiting_tests_run_in_parallel_and_measuring_ones_alone_after_them():
    (first, waiting), (second, measuring) = tiers(["tests/integration", "--durations=30"], 2)
    assert waiting == ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder", "-m", "not measures",
                       "tests/integration", "--durations=30"]
    assert measuring == ["-m", "measures", "tests/integration", "--durations=30"]
    assert "2 at a time" in first and "one at a time" in second


def test_one_plain_pytest_when_asked_or_when_the_arguments_choose():
    for args, workers in ((["-k", "x"], 0), (["-k", "x"], 1), (["-m", "docker"], 2), (["-n", "4"], 2),
                          (["-n4"], 2), (["--numprocesses=3"], 2)):
        assert tiers(args, workers) == [("the tests", args)], (args, workers)


def test_the_exit_code_is_the_first_failure_and_nothing_collected_only_when_both_collect_nothing():
    assert combined([0, 0]) == 0
    assert combined([1, 0]) == 1 and combined([0, 1]) == 1 and combined([4, 1]) == 4
    assert combined([5, 0]) == 0 and combined([0, 5]) == 0  # make test-unit: no unit test measures
    assert combined([5, 1]) == 1 and combined([5, 5]) == 5
    assert combined([2]) == 2  # interrupted in the first tier: the second never ran


def test_the_longest_files_start_first_and_unmeasured_ones_are_guessed():
    costs = {"tests/a.py": 5.0, "tests/c.py": 120.0, "tests/d.py": 5.0}
    guessed = {"tests/a.py": 2.0, "tests/b.py": 20.0, "tests/c.py": 2.0, "tests/d.py": 2.0, "tests/e.py": 2.0}
    order = longest_first(["tests/a.py", "tests/b.py", "tests/c.py", "tests/d.py", "tests/e.py"], costs, guessed)
    assert order == ["tests/c.py", "tests/b.py", "tests/a.py", "tests/d.py", "tests/e.py"]  # ties keep their order


def test_the_collection_keeps_each_file_together_longest_first(monkeypatch, tmp_path):
    """The root conftest's hook on items of three files: whole files, by the seconds in the costs file."""
    import json

    import tests.conftest as conftest

    class Item:
        def __init__(self, nodeid: str, slow: bool = False):
            self.nodeid, self.slow = nodeid, slow

        def get_closest_marker(self, name):
            return object() if name == "slow" and self.slow else None

    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"tests/unit/test_a.py": 3.0, "tests/integration/test_c.py": 95.0}))
    monkeypatch.setattr(conftest, "COSTS", costs)
    items = [Item("tests/unit/test_a.py::one"), Item("tests/unit/test_a.py::two"),
             Item("tests/integration/test_b.py::one", slow=True), Item("tests/integration/test_c.py::one"),
             Item("tests/integration/test_c.py::two[x]"), Item("tests/unit/test_d.py::one")]
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == [
        "tests/integration/test_c.py::one", "tests/integration/test_c.py::two[x]",  # 95 s, measured
        "tests/integration/test_b.py::one",                                         # slow, not measured: 20 s
        "tests/unit/test_a.py::one", "tests/unit/test_a.py::two",                   # 3 s, measured
        "tests/unit/test_d.py::one"]                                                # not measured: 2 s


def test_the_sources_are_byte_compiled_beside_them_and_a_broken_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as on CI's machines: compiled all the same
    (tmp_path / "server").mkdir()
    good = tmp_path / "server" / "fine.py"
    good.write_text("VALUE = 1\n")
    assert compile_sources(tmp_path) is True
    assert pathlib.Path(importlib.util.cache_from_source(str(good))).is_file()
    (tmp_path / "server" / "broken.py").write_text("def (:\n")
    assert compile_sources(tmp_path) is False
