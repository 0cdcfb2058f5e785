"""`make venv`'s installer: requirements.lock into the running Python's environment (.venv), with uv when it can.

    .venv/bin/python -m tfsb.install [requirements file]     (TFSB_INSTALLER=auto | uv | pip; auto by default)

pip installs the lock's 139 packages one after another and byte-compiles them on one core: 150 s on the 2-core
development machine, against 35 to 45 s for uv (parallel downloads and unpacking, bytecode compiled on every
core), the same versions either way. uv is pinned (`UV`) and installed into the environment by pip first.

uv does not read pip's configuration, so the settings pip would use (its config files and PIP_* variables, as
`pip config list` shows them) are passed to uv as options: the index, extra indexes (searched as pip does, the
best version over all of them), find-links, constraints, trusted hosts, no-index, the certificate bundle and the
proxy. A setting that changes what pip installs and has no translation here makes `auto` use pip, and says which;
so does a failure to install uv or a failing uv run (its error is printed first). `TFSB_INSTALLER=pip` always uses
pip; `TFSB_INSTALLER=uv` uses uv or fails. Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

UV = "uv==0.13.9"
CHOICES = ("auto", "uv", "pip")
# the sections pip reads for `pip install`, weakest first (pip's own order: global, then the command's, then PIP_*)
SECTIONS = ("global", "install", ":env:")
# settings that only change how pip talks or prints, not what it installs
IGNORED = frozenset({"timeout", "default-timeout", "retries", "disable-pip-version-check", "progress-bar", "quiet",
                     "verbose", "no-color", "no-input", "root-user-action", "cache-dir", "no-cache-dir",
                     "require-virtualenv", "require-venv", "break-system-packages", "log", "no-python-version-warning"})
LISTS = frozenset({"extra-index-url", "find-links", "constraint", "trusted-host"})  # pip splits these on spaces
TRUE = ("1", "true", "yes", "on")


class Untranslatable(Exception):
    """A pip setting uv would not honour the same way."""


@dataclass
class UvCall:
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def pip_settings(listing: str) -> dict[str, str]:
    """The effective install settings from `pip config list` output (lines `section.name='value'`)."""
    found: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        key, sep, raw = line.partition("=")
        section, dot, name = key.rpartition(".")
        if not (sep and dot) or section not in SECTIONS:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        found.setdefault(name.replace("_", "-"), {})[section] = str(value)
    return {name: next(by[s] for s in reversed(SECTIONS) if s in by) for name, by in found.items()}


def uv_call(settings: Mapping[str, str]) -> UvCall:
    """uv options and environment equal to pip's `settings`; Untranslatable names the first one that has none."""
    call = UvCall(options=["--index-strategy", "unsafe-best-match"])  # pip takes the best match over every index
    for name, value in sorted(settings.items()):
        items = value.split() if name in LISTS else [value]
        if name in IGNORED:
            continue
        if name == "index-url":
            call.options += ["--index-url", value]
        elif name == "extra-index-url":
            call.options += [part for item in items for part in ("--extra-index-url", item)]
        elif name == "find-links":
            call.options += [part for item in items for part in ("--find-links", item)]
        elif name == "constraint":
            call.options += [part for item in items for part in ("--constraint", item)]
        elif name == "trusted-host":
            call.options += [part for item in items for part in ("--allow-insecure-host", item)]
        elif name == "no-index":
            if value.lower() in TRUE:
                call.options.append("--no-index")
        elif name == "cert":
            call.env["SSL_CERT_FILE"] = value
        elif name == "proxy":
            call.env.update({"HTTPS_PROXY": value, "HTTP_PROXY": value})
        else:
            raise Untranslatable(f"pip's configuration sets {name}={value!r}, which this installer does not pass to uv")
    return call


Runner = Callable[..., subprocess.CompletedProcess]


def install(requirements: str, choice: str, python: str = sys.executable, run: Runner = subprocess.run,
            say: Callable[[str], None] = print) -> int:
    """Install `requirements` into `python`'s environment; returns the exit code of the install that counted."""
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if choice != "pip":
        reason: Optional[str] = None
        # -qq: a site's pip settings that name no uv (a local index, say) would each print a warning here; pip's
        # errors still show, and a failure falls back to pip with the reason
        got_uv = run([*pip, "--quiet", UV])
        if got_uv.returncode != 0:
            reason = f"pip could not install {UV} (exit {got_uv.returncode})"
        else:
            listing = run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
            try:
                call = uv_call(pip_settings(listing.stdout if listing.returncode == 0 else ""))
            except Untranslatable as err:
                reason = str(err)
            else:
                done = run([python, "-m", "uv", "pip", "install", "--quiet", "--python", python, "--compile-bytecode",
                            *call.options, "-r", requirements], env={**os.environ, **call.env})
                if done.returncode == 0:
                    return 0
                reason = f"uv failed (exit {done.returncode}, its error is above)"
        if choice == "uv":
            say(f"TFSB_INSTALLER=uv: {reason}")
            return 1
        say(f"{reason}: installing with pip instead (slower; TFSB_INSTALLER=pip skips uv)")
    return run([*pip, "-r", requirements]).returncode


def main(argv: Sequence[str]) -> int:
    choice = os.environ.get("TFSB_INSTALLER", "").strip() or "auto"
    if choice not in CHOICES:
        print(f"TFSB_INSTALLER={choice!r}: give one of {', '.join(CHOICES)} (auto: uv, else pip)", file=sys.stderr)
        return 2
    if len(argv) > 1:
        print("usage: python -m tfsb.install [requirements file]", file=sys.stderr)
        return 2
    requirements = argv[0] if argv else "requirements.lock"
    if not os.path.isfile(requirements):
        print(f"{requirements}: no such requirements file (run it from the checkout's top folder)", file=sys.stderr)
        return 2
    return install(requirements, choice, say=lambda text: print(text, file=sys.stderr, flush=True))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
