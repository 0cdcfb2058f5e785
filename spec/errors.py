"""The harness's one error base, and the one place a command turns it into a line and an exit code.

Core code raises a subclass of `HarnessError` (a spec problem, a missing export, a docker engine that is
not there); each command's entry point runs through `run_command`, which prints `error: <message>` on stderr
and returns the error's exit code. A user mistake is one line, never a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

USER_ERROR = 2       # a spec, flag, file, port or environment problem the user can fix
MISMATCH = 3         # the model's answers are not what they should be (verification, correctness)
INTERRUPTED = 130    # Ctrl-C, after what was started has been stopped


class HarnessError(Exception):
    """A problem the user can act on; str() is the whole message (what, where, what to do)."""

    exit_code = USER_ERROR
    prefix = ""

    def line(self) -> str:
        return f"error: {self.prefix}{self}"


class SpecError(HarnessError):
    """A spec problem; str() is one or more lines `file:line: key.path: what is wrong; what is allowed`."""


class UsageError(HarnessError):
    """A bad command-line value (a flag the spec would have rejected the same way)."""


_PROGRAMS: dict[str, str] = {}


def set_program(module_form: str, shown: str) -> None:
    """Show `shown` (e.g. 'tfsb bench') wherever a parser would show `module_form` ('python -m loadtests bench')."""
    _PROGRAMS[module_form] = shown


def program(module_form: str) -> str:
    """The program name a command's usage and help show: as it was invoked (tfsb or python -m)."""
    return _PROGRAMS.get(module_form, module_form)


def run_command(main: Callable[[], int], interrupted: str = "interrupted; what was started has been stopped") -> int:
    """Run a command's body: its exit code, or the HarnessError's line on stderr and its code; Ctrl-C is 130."""
    try:
        return main()
    except HarnessError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr, flush=True)
        return INTERRUPTED
