"""Files written whole or not at all: payload sets, tune checkpoints, compare results."""
from __future__ import annotations

from pathlib import Path


def save_atomically(path: Path, blob: bytes) -> None:
    """A file (payloads, a tune checkpoint) written whole or not at all (readers never see a partial one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(blob)
    partial.replace(path)
