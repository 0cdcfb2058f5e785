"""The documentation's generated reference pages (spec/reference.py): every spec key and every command's flags,
from the schema and the parsers themselves; every command's --help works (compare's crashed on a bare '%')."""
from __future__ import annotations

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
