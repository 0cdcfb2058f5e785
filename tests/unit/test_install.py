"""The install: one `tfsb` command over every command, and every direct import declared where it belongs (the
runtime dependencies for the product's packages, the test and docs extras for tests/ and docs/)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO
from tfsb import cli

PRODUCT = ("tfsb", "spec", "exporter", "server", "deploy", "loadtests", "demo", "benchmarks")
OWN = set(PRODUCT) | {"tests", "dockerfiles", "docs"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return {"runtime": {_name(r) for r in project["dependencies"]},
            **{extra: {_name(r) for r in extras[extra]} for extra in extras}}


def _imports(folder: Path) -> dict[str, str]:
    """Top-level third-party modules imported anywhere under `folder` (in functions too): module -> a file."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN and top != "__future__":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("where, allowed", [(PRODUCT[:-1], ("runtime",)), (("benchmarks",), ("runtime", "perf")),
                                            (("tests",), ("runtime", "test")), (("docs",), ("runtime", "docs"))])
def test_every_direct_import_is_declared(where, allowed):
    declared = _declared()
    ok = set().union(*(declared[kind] for kind in allowed))
    distributions = packages_distributions()
    missing = []
    for folder in where:
        for module, path in _imports(REPO / folder).items():
            names = {_name(d) for d in distributions.get(module, [])}
            assert names, f"{module} (imported in {path}) belongs to no installed distribution"
            if not names & ok:
                missing.append(f"{module} ({'/'.join(sorted(names))}) imported in {path}")
    assert not missing, f"not declared in pyproject.toml's {' or '.join(allowed)} dependencies: {missing}"


def test_runtime_dependencies_leave_out_what_only_tests_and_docs_use():
    declared = _declared()
    for tool in ("pytest", "pytest-timeout", "mkdocs", "mkdocs-material", "playwright", "hypothesis", "schemathesis",
                 "h2"):
        assert tool not in declared["runtime"], tool


def test_tfsb_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    shown = capsys.readouterr().out
    for name in ("export", "inspect", "serve", "deploy", "bench", "capacity", "tune", "compare", "history", "worker",
                 "demo"):
        assert re.search(rf"^  {name} +\S", shown, re.M), name


@pytest.mark.parametrize("command", ["export", "inspect", "deploy", "bench", "capacity", "tune", "compare", "history",
                                     "worker", "demo"])
def test_a_commands_help_is_its_own_parser_under_tfsb(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tfsb {command} ")


def test_a_mistyped_command_is_one_line_with_a_suggestion(capsys):
    assert cli.main(["benhc", "--spec", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no command 'benhc'; did you mean 'bench'?" in err
    assert cli.main([]) == 2 and "usage: tfsb <command>" in capsys.readouterr().err


def test_the_console_script_and_the_makefile_use_tfsb():
    script = Path(sys.executable).with_name("tfsb")
    assert script.is_file(), "make venv installs the tfsb console script"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0 and "capacity" in done.stdout, done.stderr
    makefile = (REPO / "Makefile").read_text()
    assert not re.search(r"-m (loadtests|exporter|deploy|demo|server)\b(?!\.)", makefile), \
        "Makefile targets call tfsb, not python -m"
