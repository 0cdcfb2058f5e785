"""The `tfsb` command: one console script whose subcommands are the harness's commands.

Each subcommand hands the rest of the line to the entry point that `python -m <module>` runs (its own parser,
flags and exit codes), so `tfsb bench --spec F` and `python -m loadtests bench --spec F` are the same command.
Nothing heavy is imported until a subcommand is chosen: `tfsb --help` answers at once.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from spec.errors import USER_ERROR, set_program


@dataclass(frozen=True)
class Command:
    name: str
    entry: str               # module:function, called with the argument list
    prefix: tuple[str, ...]  # arguments put before the user's (the module's own subcommand)
    module_form: str         # how `python -m` spells it (its parser's program name)
    make: str                # the Makefile target that runs it
    summary: str


COMMANDS: tuple[Command, ...] = (
    Command("export", "exporter.__main__:main", (), "python -m exporter", "make export",
            "export the model a spec names as a new, verified SavedModel version"),
    Command("inspect", "exporter.__main__:main", ("inspect",), "python -m exporter inspect", "make inspect",
            "describe a SavedModel: its signatures and what to send to each"),
    Command("serve", "server.__main__:main", (), "python -m server", "make serve",
            "the embedded TF Serving drop-in, with tensorflow_model_server's flags"),
    Command("deploy", "deploy.__main__:main", (), "python -m deploy", "make deploy / down / status / compose / k8s",
            "serve a spec's model (up), stop it (down), status, logs, compose, k8s, clean"),
    Command("bench", "loadtests.__main__:main", ("bench",), "python -m loadtests bench", "make bench",
            "benchmark a spec's model over REST and gRPC: sweeps, validity, report"),
    Command("capacity", "loadtests.__main__:main", ("capacity",), "python -m loadtests capacity", "make capacity",
            "the highest request rate within a latency SLO, per protocol and payload"),
    Command("tune", "loadtests.__main__:main", ("tune",), "python -m loadtests tune", "make tune",
            "the best batching, thread and image settings under an SLO"),
    Command("compare", "loadtests.__main__:main", ("compare",), "python -m loadtests compare", "make compare",
            "one report against another, with intervals and verdicts (a CI gate)"),
    Command("history", "loadtests.__main__:main", ("history",), "python -m loadtests history", "make history",
            "a model's recorded bench, capacity and tune results over time"),
    Command("lifecycle", "loadtests.__main__:main", ("lifecycle",), "python -m loadtests lifecycle", "make lifecycle",
            "cold start (with and without warmup), a version swap under load, memory per copy"),
    Command("worker", "loadtests.__main__:main", ("worker",), "python -m loadtests worker", "make worker",
            "a load-generator worker for a bench run on another machine"),
    Command("demo", "demo.__main__:main", (), "python -m demo", "make demo",
            "a web page to try the deployed model on a photo"),
)
BY_NAME = {command.name: command for command in COMMANDS}


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: tfsb <command> [arguments]   (tfsb <command> --help: the command's own flags)", "",
             "Export, deploy and benchmark TensorFlow image models behind TensorFlow Serving.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"tfsb {version('tfserve-bench')}"
    except PackageNotFoundError:
        return "tfsb (not installed: run from a source checkout)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]) and len(argv) == 1:
        print(usage())
        return 0
    if argv[:1] == ["--version"]:
        print(_version())
        return 0
    if not argv:
        print(usage(), file=sys.stderr)
        return USER_ERROR
    command = BY_NAME.get(argv[0])
    if command is None:
        close = difflib.get_close_matches(argv[0], BY_NAME, n=1)
        print(f"error: tfsb: no command {argv[0]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
              + f" (the commands: {', '.join(BY_NAME)}; tfsb --help says what each does)", file=sys.stderr)
        return USER_ERROR
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    set_program(command.module_form, f"tfsb {command.name}")
    module, _, function = command.entry.partition(":")
    return getattr(importlib.import_module(module), function)([*command.prefix, *argv[1:]])
