"""Command line: `python -m exporter --spec FILE` exports; `python -m exporter inspect DIR` describes a SavedModel."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from exporter.describe import InspectError, describe
from exporter.export import export
from spec.errors import UsageError, program, run_command
from spec.loader import load_spec


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program("python -m exporter"),
                                     description="Export the model a spec names as a versioned, verified SavedModel. "
                                                 "`tfsb inspect DIR` describes any SavedModel.")
    parser.add_argument("--spec", required=True, type=Path, help="the model spec (YAML), e.g. specs/digits_cnn.yaml")
    parser.add_argument("--version", help="a positive integer or 'auto' (default: the spec's export.version)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace an existing version")
    return parser


def _inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program("python -m exporter inspect"),
                                     description="Print a SavedModel's signatures and what to send to each.")
    parser.add_argument("directory", type=Path, help="a SavedModel directory (holding saved_model.pb)")
    return parser


def _version(value: Optional[str]):

    if value is None or value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--version {value!r}: use a positive integer or 'auto'")
    return int(value)


def main(argv: Optional[Sequence[str]] = None) -> int:

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv[:1] == ["inspect"]:
        args = _inspect_parser().parse_args(argv[1:])
        return run_command(lambda: _inspect(args.directory))
    args = _export_parser().parse_args(argv)
    return run_command(lambda: _export(args))


def _inspect(directory: Path) -> int:

    try:
        print(describe(directory))
    except OSError as exc:
        raise InspectError(f"{directory}: cannot read it: {exc.strerror or exc}") from None
    return 0


def _export(args: argparse.Namespace) -> int:

    version = _version(args.version)
    spec = load_spec(args.spec)
    result = export(spec, version=version, overwrite=args.overwrite)
    print()
    print(describe(result.path))
    print(f"exported {spec.name} version {result.version} to {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
