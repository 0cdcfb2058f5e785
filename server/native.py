"""Optional C helpers for the embedded server, loaded with ctypes; every one has a pure-Python equivalent.

`make venv` (and so every make target) builds them with the system C compiler into build/native/; without a
compiler, or in images without one, the server runs the Python code instead, with the same results, and
`make perf` says which one it measured. Build by hand: `python -m server.native`.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

SOURCE = Path(__file__).with_name("skeleton.c")


def _library() -> Path:
    """Where the helpers are built and loaded from: TFSB_NATIVE_LIB; in a source checkout (make venv), its
    build/native/; after a plain `pip install .`, the user's cache, never inside the installed code."""
    if os.environ.get("TFSB_NATIVE_LIB"):
        return Path(os.environ["TFSB_NATIVE_LIB"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "build" / "native" / "libskeleton.so"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tfsb" / "native" / "libskeleton.so"


LIBRARY = _library()


def build(target: Path = LIBRARY) -> Path:
    """Compile skeleton.c into `target`; raises RuntimeError with the compiler's words if that fails."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".so.partial")
    try:
        result = subprocess.run([compiler, "-O2", "-pthread", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)],
                                capture_output=True, text=True)
    except OSError as exc:
        raise RuntimeError(f"cannot run the C compiler {compiler}: {exc.strerror or exc}") from None
    if result.returncode != 0:
        raise RuntimeError(f"{compiler} failed on {SOURCE}: {result.stderr.strip()}")
    partial.replace(target)  # atomic: a server starting meanwhile sees the old library or the new one
    return target


def load(path: Path = LIBRARY) -> Optional[ctypes.CDLL]:
    """The compiled helpers, or None when they are not built (or were built for another system)."""
    if not path.is_file():
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError:
        return None
    library.regular_shape.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    library.regular_shape.restype = ctypes.c_int
    library.regular_shape_start.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    library.regular_shape_start.restype = ctypes.c_void_p
    library.regular_shape_finish.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    library.regular_shape_finish.restype = ctypes.c_int
    return library


def main() -> int:
    """Build; a missing compiler is reported, never an error: the helpers are optional by design."""
    try:
        print(f"built {build()}")
    except RuntimeError as exc:
        print(f"C helpers not built: {exc}. The embedded server uses its pure-Python code instead (same results, "
              "slower REST decoding of big numeric bodies).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
