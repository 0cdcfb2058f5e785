"""Shared fixtures: repository paths, TF Serving's test models, spec copies, one exported digits model, exports
cached by content."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "fixtures" / "tfserving_testdata"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# seconds each test file took, as measured by `make test-costs`: the first tier hands out the longest files first
COSTS = REPO / "tests" / "costs.json"
UNMEASURED_S = {True: 20.0, False: 2.0}  # a file not in COSTS yet: slow-marked or not
# exports cached by content (cached_export), shared by the workers of a run and by the two tiers of `make test`
EXPORT_CACHE = Path(os.environ.get("TFSB_TEST_EXPORTS") or Path(tempfile.gettempdir()) / "tfsb-test-exports")
# an entry no run has used for this long goes when a run starts: each change to the exporter, spec or server code
# leaves a whole set of exports behind (about 400 MB with MobileNetV2)
EXPORT_CACHE_MAX_AGE_S = 7 * 24 * 3600


def pytest_collection_modifyitems(config, items):
    """The longest test files first (tests.tiers.longest_first), each file's tests together and in their order.

    The first tier hands whole files to its workers in this order (`--dist loadfile --no-loadscope-reorder`,
    tests/tiers.py), so the long files start early and short ones fill the end. pytest-xdist's own order (most tests
    first) left the long one-test files (reliability, tune, Docker) to the end, and one worker ran them alone."""
    from tests.tiers import longest_first

    costs = json.loads(COSTS.read_text()) if COSTS.is_file() else {}
    unmeasured: dict[str, float] = {}
    for item in items:
        unmeasured.setdefault(item.nodeid.split("::")[0], UNMEASURED_S[item.get_closest_marker("slow") is not None])
    rank = {name: number for number, name in enumerate(longest_first(list(unmeasured), costs, unmeasured))}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # stable: each file's order is kept


class _CostRecorder:
    """Setup, call and teardown seconds per test file, merged into `target` at the end (`make test-costs`). In an
    xdist run it lives in the controller, which sees every worker's reports."""

    def __init__(self, target: Path):
        self.target, self.spent = target, {}

    def pytest_runtest_logreport(self, report):
        path = report.nodeid.split("::")[0]
        self.spent[path] = self.spent.get(path, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        costs = json.loads(self.target.read_text()) if self.target.is_file() else {}
        costs.update({name: round(seconds, 1) for name, seconds in self.spent.items()})
        self.target.write_text(json.dumps(dict(sorted(costs.items())), indent=1) + "\n")


def pytest_configure(config):
    """TFSB_TEST_COSTS=<file>: record what the tests run in parallel took (the order only matters there, and a file
    with tests in both tiers is timed by its first-tier share). The run's main process also prunes the export cache
    (prune_export_cache)."""
    if not hasattr(config, "workerinput"):
        prune_export_cache(EXPORT_CACHE, EXPORT_CACHE_MAX_AGE_S)
    target = os.environ.get("TFSB_TEST_COSTS")
    if target and not hasattr(config, "workerinput") and (getattr(config.option, "numprocesses", None) or 0) > 0:
        config.pluginmanager.register(_CostRecorder(REPO / target), "tfsb-test-costs")


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


def spec_data(base: str | Path, **overrides) -> dict:
    """An example spec's content with dotted-key overrides, e.g. {'export.base_path': '/x'}."""
    data = yaml.safe_load((REPO / base).read_text()) if base else {}
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return data


def write_spec(directory: Path, base: str | Path, **overrides) -> Path:
    """Copy an example spec into `directory` with dotted-key overrides (spec_data)."""
    path = Path(directory) / Path(base).name
    path.write_text(yaml.safe_dump(spec_data(base, **overrides), sort_keys=False))
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root; capture text output."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ctrl_c_default() -> None:
    """preexec_fn for a command a test interrupts: SIGINT back to its default, so the child's Python turns it into
    KeyboardInterrupt. A suite started in the background (`nohup make test &`, `cmd &` in a script) inherits SIGINT
    ignored, and an interrupt test then waited for a command that could not hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def interruptible(*args: str, cleanup: Optional[Callable[[], object]] = None, own_group: bool = False):
    """`python <args>` from the repository root, for a test to interrupt: SIGINT at its default (ctrl_c_default),
    text output piped. `own_group`: in a process group of its own, which the test interrupts whole (os.killpg), as
    a terminal's Ctrl-C reaches the command and its children.

    On the way out, a command still running (the interrupt failed, or the test did before sending it) is killed,
    its group with it, and `cleanup()` runs unless the command exited 130: a failed interrupt test leaves nothing
    running for the tests after it."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=own_group, preexec_fn=ctrl_c_default)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            if own_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.communicate()
        if proc.returncode != 130 and cleanup is not None:
            cleanup()


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory):
    """specs/digits_cnn.yaml exported (cached_export): (a spec of this session pointing at it, version dir)."""
    version_dir = cached_export("specs/digits_cnn.yaml")
    directory = tmp_path_factory.mktemp("digits")
    return write_spec(directory, "specs/digits_cnn.yaml", **{"export.base_path": str(version_dir.parents[1])}), \
        version_dir


@pytest.fixture(scope="session")
def default_export() -> Path:
    """The default spec (specs/mobilenet_v2.yaml, as committed: calibrated random weights, warmup records) exported:
    its version directory (cached_export)."""
    return cached_export("specs/mobilenet_v2.yaml")


def _export_key(data: dict) -> str:
    """What an export depends on: the spec as written (but where it is written to), the source of the packages
    the exporter runs (exporter, spec, server) and the versions of the libraries that build and save the model."""
    key = hashlib.sha256()
    data = json.loads(json.dumps(data))  # a copy, to drop base_path from
    data.get("export", {}).pop("base_path", None)
    key.update(json.dumps(data, sort_keys=True).encode())
    for package in ("exporter", "spec", "server"):
        for source in sorted((REPO / package).rglob("*.py")):
            key.update(str(source.relative_to(REPO)).encode() + b"\0" + source.read_bytes())
    for library in ("tensorflow", "keras", "numpy", "pillow", "scikit-learn", "scikit-image"):
        try:
            key.update(f"{library}={metadata.version(library)};".encode())
        except metadata.PackageNotFoundError:
            key.update(f"{library}=none;".encode())
    return key.hexdigest()[:20]


def cached_export(base: str, **overrides) -> Path:
    """The spec `base` (with dotted-key `overrides`) exported once per machine and content; returns its version
    directory, to be read, never written (serve it, point export.base_path at its parents[1]).

    The export is the exporter's command (`python -m exporter --spec`), its output kept beside it (export_log); later
    tests, the other xdist workers (they wait on a lock) and the second tier of `make test` reuse it while nothing
    it depends on (_export_key) changed: a change to the exporter's code or to the spec runs the command again.
    The spec it was made from is kept beside it too (export_spec)."""
    key = _export_key(spec_data(base, **overrides))
    entry = EXPORT_CACHE / key
    EXPORT_CACHE.mkdir(parents=True, exist_ok=True)
    with open(EXPORT_CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one export per key, whichever worker comes first
        try:
            if not (entry / "done").is_file():
                shutil.rmtree(entry, ignore_errors=True)  # an export that was interrupted
                (entry / "spec").mkdir(parents=True)
                spec_path = write_spec(entry / "spec", base, **{**overrides, "export.base_path": str(entry / "models")})
                done = run_cli("-m", "exporter", "--spec", str(spec_path), timeout=900)
                (entry / "export.log").write_text(done.stdout + done.stderr)
                if done.returncode != 0:
                    raise RuntimeError(f"exporting {base} for the tests failed ({done.returncode}):\n"
                                       f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
                (version,) = [p for p in (entry / "models").glob("*/*") if p.is_dir()]
                (entry / "done").write_text(str(version.relative_to(entry)))  # written last: the entry is whole
            version_dir = entry / (entry / "done").read_text()
            extra = sorted(p.name for p in version_dir.parent.iterdir() if p != version_dir)
            if extra:  # a test wrote into it: later tests would serve what it left
                shutil.rmtree(entry)
                raise RuntimeError(f"the shared export {version_dir.parent} held {extra} beside version "
                                   f"{version_dir.name}: a test wrote into it (copy a version out instead); removed, "
                                   "the next run exports again")
            (entry / "used").touch()  # its age for prune_export_cache
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return version_dir


def prune_export_cache(cache: Path, max_age_s: float, now: Optional[float] = None) -> list[str]:
    """Remove the cache entries that no run has used for `max_age_s` seconds; returns their keys. An entry's age is
    that of its `used` file, touched each time cached_export hands it out (or, without one, of the entry itself). An
    entry whose lock another process holds (an export running, or being handed out) stays. The empty lock files
    stay too: a process waiting on one must lock the same file as the next one to come."""
    now = time.time() if now is None else now
    if not cache.is_dir():
        return []

    def unused_for(entry: Path) -> float:
        try:
            return now - max(p.stat().st_mtime for p in (entry, entry / "used") if p.exists())
        except (FileNotFoundError, ValueError):  # another run removed it meanwhile
            return 0.0

    removed = []
    for entry in sorted(p for p in cache.iterdir() if p.is_dir()):
        if unused_for(entry) < max_age_s:
            continue
        with open(cache / f"{entry.name}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                if unused_for(entry) >= max_age_s:  # again, under the lock: a run may have just been handed it
                    shutil.rmtree(entry, ignore_errors=True)  # a process waiting on it finds none: it exports again
                    removed.append(entry.name)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return removed


def export_log(version_dir: Path) -> str:
    """What the exporter's command printed when it made a cached_export."""
    return (version_dir.parents[2] / "export.log").read_text()


def export_spec(version_dir: Path) -> Path:
    """The spec file a cached_export was made from (its provenance records that file's sha256)."""
    return next((version_dir.parents[2] / "spec").glob("*.yaml"))
