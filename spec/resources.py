"""Files the code reads that ship inside the packages (Dockerfiles, report assets, the demo page, C sources),
found through importlib.resources, so they are where the installed code is: a checkout, or site-packages after a
plain `pip install .`. State (exports, reports, the embedded server's .run/) never goes there."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_dir(package: str) -> Path:
    """The directory of an installed package's files (pip installs packages as plain directories)."""
    found = files(package)
    if not isinstance(found, Path):  # a zip import: nothing here is installed that way
        raise RuntimeError(f"the package {package!r} is not a directory on disk ({found!r}): install it with pip")
    return found
