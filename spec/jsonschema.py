"""`python -m spec.jsonschema OUT.json`: write the spec's JSON Schema (for editors) from spec/schema.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from spec.loader import json_schema


def render() -> str:
    """The schema as the exact text kept in specs/spec.schema.json."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m spec.jsonschema OUT.json", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(render(), encoding="utf-8")
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
