"""Shared fixtures: repository paths, TF Serving's test models, spec copies, one exported digits model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "fixtures" / "tfserving_testdata"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """TF Serving's own test models; CI always has ../shared, elsewhere the test says why it skips."""
    if not TESTDATA.is_dir():
        pytest.skip(f"TF Serving test models not found at {TESTDATA}: clone the repository beside ../shared "
                    "(CI always has it)")
    return TESTDATA


# validity reasons that 2-second windows on 2 shared cores can trip without anything being wrong with a sweep's
# mechanics, which is what the short bench tests check (the rules themselves are tested with stand-ins and unit tests)
NOISE = ("generator-bound", "Little's law does not hold")

ATTEMPTS = 3  # a run the harness itself flags as generator-limited (late starts, CPU) is measured again


def generator_kept_up(reasons) -> bool:
    """False when a run's invalid reasons say the load generator could not keep its schedule or lacked CPU."""
    return not any(r.startswith("generator-bound") or "started late" in r for r in reasons)


def measured_while_the_generator_keeps_up(measure, kept_up):
    """`measure()` again (up to ATTEMPTS) while the harness says the load generator could not keep up: on a busy
    2-core machine the generator loses its CPU to other processes, which the run reports rather than hides. The
    checks then apply, unweakened, to a run the harness vouches for."""
    for attempt in range(1, ATTEMPTS + 1):
        result = measure()
        if kept_up(result) or attempt == ATTEMPTS:
            return result
        print(f"attempt {attempt}: the generator could not keep up (the machine is busy); measuring again")


def write_spec(directory: Path, base: str | Path, **overrides) -> Path:
    """Copy an example spec into `directory` with dotted-key overrides, e.g. {'export.base_path': '/x'}."""
    data = yaml.safe_load((REPO / base).read_text()) if base else {}
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path = Path(directory) / Path(base).name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root; capture text output."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ctrl_c_default() -> None:
    """preexec_fn for a command a test interrupts: SIGINT back to its default, so the child's Python turns it into
    KeyboardInterrupt. A suite started in the background (`nohup make test &`, `cmd &` in a script) inherits SIGINT
    ignored, and an interrupt test then waited for a command that could not hear it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory):
    """specs/digits_cnn.yaml exported once per test session: (spec path, version dir)."""
    from spec.loader import load_spec
    from exporter.export import export

    directory = tmp_path_factory.mktemp("digits")
    spec_path = write_spec(directory, "specs/digits_cnn.yaml", **{"export.base_path": str(directory / "models")})
    result = export(load_spec(spec_path), log=lambda line: None)
    return spec_path, result.path
