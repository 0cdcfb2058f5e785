"""YAML loading that remembers where every key came from.

`load_yaml_with_lines` returns the parsed data plus a map from key paths (tuples of keys and list
indices) to 1-based line numbers, so validation errors can name `file:line`. Only `yaml.SafeLoader`
is used: a spec can never construct arbitrary Python objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[Any, ...]


class YamlSourceError(Exception):
    """The file cannot be read or is not valid YAML; the message is one line, ready for a user."""


@dataclass(frozen=True)
class YamlDocument:
    path: Path
    data: Any
    lines: dict[KeyPath, int]

    def line_of(self, key_path: KeyPath) -> int:
        """The line of the longest prefix of `key_path` that exists in the file (1 if none)."""
        for end in range(len(key_path), -1, -1):
            line = self.lines.get(tuple(key_path[:end]))
            if line is not None:
                return line
        return 1


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: Path) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlSourceError(
                    f"{file}:{line}: duplicate key '{key}' (first defined on line {seen[key]}); "
                    "remove one of them")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _walk(item, path + (index,), lines, file)


def load_yaml_with_lines(path: Path) -> YamlDocument:
    """Parse `path` with the safe loader; raise YamlSourceError with `file:line` on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlSourceError(f"{path}: no such file; pass an existing spec, e.g. specs/mobilenet_v2.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlSourceError(f"{path}: cannot read the file: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlSourceError(f"{path}:{line}: YAML does not parse: {problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, before any token
        line = text.count("\n", 0, exc.position) + 1
        raise YamlSourceError(f"{path}:{line}: YAML does not parse: character {exc.character!r} (position "
                              f"{exc.position}) is not allowed in YAML; remove it or save the file as text") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise YamlSourceError(f"{path}:1: YAML does not parse: {detail}") from None
    lines: dict[KeyPath, int] = {}
    if root is not None:
        _walk(root, (), lines, path)
    return YamlDocument(path=path, data=data, lines=lines)
