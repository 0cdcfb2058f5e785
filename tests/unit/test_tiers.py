"""make test's tiers (tests/tiers.py): which pytest runs, and the exit code they add up to."""
from __future__ import annotations

from tests.tiers import combined, tiers


def test_waiting_tests_run_in_parallel_and_measuring_ones_alone_after_them():
    (first, waiting), (second, measuring) = tiers(["tests/integration", "--durations=30"], 2)
    assert waiting == ["-n", "2", "--dist", "loadfile", "-m", "not measures", "tests/integration", "--durations=30"]
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
