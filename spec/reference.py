"""The documentation's reference pages, generated from the code they describe (run by docs/hooks.py at build time).

* `spec_page()`: every spec key, its type, default and description, from the JSON Schema of spec/schema.py;
* `commands_page()`: every command's usage and flags, from its own argument parser (`--help`, captured in-process).

Nothing here is written by hand, so the pages cannot drift from the schema or the parsers.
"""
from __future__ import annotations

import contextlib
import io
import json
from typing import Any, Callable, Optional

from spec.errors import set_program
from spec.loader import json_schema
from tfsb.cli import COMMANDS, usage


def _resolve(schema: dict, node: dict) -> dict:
    """The node with a $ref (or an Optional's single $ref) replaced by its definition."""
    if "$ref" in node:
        return schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    refs = [n for n in node.get("anyOf", []) if "$ref" in n]
    if len(refs) == 1 and all("$ref" in n or n.get("type") == "null" for n in node["anyOf"]):
        return schema["$defs"][refs[0]["$ref"].rsplit("/", 1)[1]]
    return node


def _type(node: dict) -> str:
    if "anyOf" in node:
        kinds = [_type(n) for n in node["anyOf"] if n.get("type") != "null"]
        optional = any(n.get("type") == "null" for n in node["anyOf"])
        return " or ".join(kinds) + (" (or null)" if optional else "")
    if "enum" in node:
        return ", ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "$ref" in node:
        return "mapping"
    kind = node.get("type", "any")
    if kind == "array":
        items = node.get("items") or (node.get("prefixItems") or [{}])[0]
        return f"list of {_type(items)}"
    return {"object": "mapping", "number": "number", "integer": "integer", "string": "string",
            "boolean": "boolean"}.get(kind, str(kind))


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: pipes escaped, and <name>-style placeholders shown, not taken as HTML."""
    return str(text).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def _rows(schema: dict, node: dict, prefix: str) -> list[str]:
    rows = []
    for key, child in node.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        target = _resolve(schema, child)
        if target is not child and "properties" in target:  # a section of its own: its keys follow
            rows.append(f"| `{dotted}` | section | | {_cell(child.get('description', target.get('description', '')))} |")
            rows += _rows(schema, target, dotted + ".")
            continue
        default = child.get("default", "*required*" if key in node.get("required", []) else "")
        shown = "" if default == "" else ("*required*" if default == "*required*" else f"`{json.dumps(default)}`")
        description = child.get("description") or ""
        if "$ref" in json.dumps(child) and target is child:  # one of several kinds (model.source)
            kinds = [schema["$defs"][n["$ref"].rsplit("/", 1)[1]] for n in child.get("anyOf", child.get("oneOf", []))
                     if "$ref" in n]
            description += (" One of: " + ", ".join(k.get("title", "") for k in kinds) + " (below).") if kinds else ""
        rows.append(f"| `{dotted}` | {_cell(_type(child))} | {_cell(shown)} | {_cell(description)} |")
    return rows


def spec_page() -> str:
    """Markdown: every key of a spec, section by section, with its type, default and description."""

    schema = json_schema()
    lines = ["# Spec keys", "",
             "Every key of a model spec (YAML), generated from `spec/schema.py` when the site is built. Unknown keys "
             "are refused with the file and line; defaults are filled in one place. The same schema is in "
             "`specs/spec.schema.json` for editors (`make schema`).", "",
             "| key | type | default | description |", "|---|---|---|---|"]
    lines += _rows(schema, schema, "")
    kinds = [name for name in schema["$defs"] if name.endswith("Source")]
    for name in kinds:
        node = schema["$defs"][name]
        lines += ["", f"## model.source: {node.get('title', name)}", "", _cell(node.get("description", "")), "",
                  "| key | type | default | description |", "|---|---|---|---|"]
        lines += _rows(schema, node, "model.source.")
    return "\n".join(lines) + "\n"


def _entry(path: str) -> Callable[[list[str]], Optional[int]]:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def help_text(entry: str, args: tuple[str, ...]) -> str:
    """What `<command> <args> --help` prints, from its parser (in this process; argparse exits after it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            _entry(entry)([*args, "--help"])
        except SystemExit:
            pass
    return out.getvalue().rstrip()


def commands_page() -> str:
    """Markdown: `tfsb --help`, then each command's usage and flags as its parser prints them under tfsb."""

    lines = ["# Commands and flags", "",
             "One command, `tfsb`, with a subcommand per job; `python -m <module>` runs the same entry points. Each "
             "subcommand's own `--help` below is captured from its argument parser when the site is built. The "
             "`make` targets call `tfsb` with their variables as these flags (`make help` lists the targets).", "",
             "```text", usage(), "```", ""]
    for command in COMMANDS:
        set_program(command.module_form, f"tfsb {command.name}")
        lines += [f"## tfsb {command.name}", "", f"`{command.make}`; also `{command.module_form}`", "",
                  "```text", help_text(command.entry, command.prefix), "```", ""]
    return "\n".join(lines)
