"""The documentation's generated reference pages (spec/reference.py): every spec key and every command's flags,
from the schema and the parsers themselves; every command's --help works (compare's crashed on a bare '%')."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from spec import reference
from spec.loader import json_schema
from tests.conftest import REPO
from tfsb.cli import COMMANDS


def _keys(schema: dict, node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, child in node.get("properties", {}).items():
        keys.append(prefix + key)
        target = reference._resolve(schema, child)
        if target is not child and "properties" in target:
            keys += _keys(schema, target, f"{prefix}{key}.")
    return keys


def test_the_spec_page_lists_every_key_of_the_schema():
    schema, page = json_schema(), reference.spec_page()
    keys = _keys(schema, schema)
    assert "benchmark.max_duration" in keys and "benchmark.slo_confidence" in keys and len(keys) > 100
    for key in keys:
        assert f"| `{key}` |" in page, key
    assert "3 x duration" in page  # max_duration's default, from its description in the schema
    assert "&lt;name&gt;" in page  # a placeholder is shown, not swallowed as an HTML tag


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_command_prints_its_help(command):
    text = reference.help_text(command.entry, command.prefix)
    assert "Traceback" not in text and text.lower().startswith("usage:"), text[-500:]


def test_the_commands_page_holds_every_command_and_the_flags_of_bench_capacity_and_compare():
    page = reference.commands_page()
    for flag in ("--max-duration", "--slo-confidence", "--workers", "--fail-on", "--min-effect", "--rest_api_port"):
        assert flag in page, flag
    for command in COMMANDS:
        assert f"## tfsb {command.name}\n" in page, command.name
    assert "usage: tfsb bench " in page and "usage: tfsb inspect " in page


def test_the_readme_is_short_and_every_link_in_it_and_the_changelog_leads_somewhere():
    """The README is the front page (the manual is the site): at most 200 lines, and a link to a file or a heading
    that moved or never existed fails here, since MkDocs's strict build does not read the README."""
    import re

    readme = (REPO / "README.md").read_text()
    assert readme.count("\n") < 200, readme.count("\n")

    def slug(heading: str) -> str:  # Python-Markdown's toc slug, as the site and GitHub both number them
        text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
        return re.sub(r"[\s]+", "-", text)

    for name in ("README.md", "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", (REPO / name).read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            assert (REPO / path).exists(), f"{name} links to {path}, which does not exist"
            if anchor:
                headings = [slug(h) for h in re.findall(r"^#+ (.+)$", (REPO / path).read_text(), re.M)]
                assert anchor in headings, f"{name} links to {target}: no such heading ({headings})"


def _make_docs_command(site) -> list[str]:
    """`make docs`'s mkdocs command as the Makefile spells it, run by this Python, building into `site`."""
    recipe = (REPO / "Makefile").read_text().split("\ndocs:", 1)[1].splitlines()[1]
    args = recipe.split("/bin/mkdocs", 1)[1].split()
    return [sys.executable, "-m", "mkdocs", *args, "--site-dir", str(site)]


def test_make_docs_fails_on_a_link_to_no_page(tmp_path):
    """Strict means a broken link fails the build: MkDocs' --quiet once hid the warning from strict mode, and the
    site built (mkdocs issue 4126)."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    built = subprocess.run(_make_docs_command(tmp_path / "site"), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    with open(tmp_path / "docs" / "guides" / "demo.md", "a") as page:
        page.write("\nSee [the missing page](nowhere.md).\n")
    broken = subprocess.run(_make_docs_command(tmp_path / "site"), cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert broken.returncode != 0 and "nowhere.md" in broken.stdout + broken.stderr, broken.stdout + broken.stderr
