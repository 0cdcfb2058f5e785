"""`make reliability --quick`: every load-and-fault scenario passes its condition (zero failed requests through a
hot version change and a corrupt version, no request lost to SIGTERM and exit 0, overload refused only as
UNAVAILABLE, a short soak without failures or memory growth over 10%). Figures are printed, not asserted."""
from __future__ import annotations

import pytest

from tests.conftest import run_cli, write_spec

# the scenarios judge failures, exit codes and memory, never a latency or a rate: they may run beside another
# test (not `measures`)
pytestmark = pytest.mark.slow


def test_quick_reliability_scenarios_all_pass(tmp_path, digits_export):
    _, version_dir = digits_export
    spec_path = write_spec(tmp_path, "specs/digits_cnn.yaml", **{"export.base_path": str(version_dir.parents[1])})
    result = run_cli("-m", "benchmarks.reliability", "--quick", "--spec", str(spec_path), timeout=900)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    for line in ("1. hot version change under load", "2. corrupt version under load", "3. SIGTERM under load",
                 "4. overload", "5. soak", "reliability: all passed"):
        assert line in result.stdout
    assert "version 2 END (INVALID_ARGUMENT" in result.stdout and "exit code 0" in result.stdout
