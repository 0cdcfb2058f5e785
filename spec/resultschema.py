"""The layout version of every result the harness writes: summary.json, capacity.json, tune.json, compare.json
and the rows of the results history.

`schema_version` rises only when a field is renamed, removed or changes meaning; a new field does not raise it
(readers ignore what they do not know). A file written before versioning has no `schema_version` and reads as
version 0, which holds the same fields as version 1. A reader takes every version up to its own and refuses a
newer one in one line, naming the file and what to do.
"""
from __future__ import annotations

from typing import Any, Mapping

from spec.errors import UsageError

SCHEMA_VERSION = 1
FIELD = "schema_version"
UNVERSIONED = 0  # written before the field existed: the same layout as version 1


def stamped(result: Mapping[str, Any]) -> dict:
    """The result with this harness's schema_version as its first field (any version it carried replaced)."""
    return {FIELD: SCHEMA_VERSION, **{key: value for key, value in result.items() if key != FIELD}}


def version_of(result: Mapping[str, Any], where: str) -> int:
    """The result's schema version (0 when it has none). UsageError when it is not one this harness can read:
    newer than SCHEMA_VERSION, or not a version number at all. `where` names the file for the message."""
    version = result.get(FIELD, UNVERSIONED)
    if version is None:
        return UNVERSIONED
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UsageError(f"{where}: {FIELD} {version!r} is not a version number (a whole number from 0); the file "
                         "was not written by tfsb, or was edited by hand")
    if version > SCHEMA_VERSION:
        raise UsageError(f"{where}: written by a newer tfsb ({FIELD} {version}; this one reads up to "
                         f"{SCHEMA_VERSION}): upgrade tfsb, or read it with the version that wrote it")
    return version


def readable(version: Any) -> bool:
    """Whether a history row's schema_version (None: written before versioning) is one this harness reads."""
    return version is None or (isinstance(version, int) and 0 <= version <= SCHEMA_VERSION)
