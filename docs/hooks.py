"""MkDocs hook: adds the generated reference pages (spec/reference.py) to the site at build time."""
from __future__ import annotations

import os

from mkdocs.structure.files import File

GENERATED = {"reference/spec.md": "spec_page", "reference/commands.md": "commands_page"}


def on_files(files, config):
    """Generate each reference page from the code it describes; nothing of it is kept in the repository."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from spec import reference

    for uri, builder in GENERATED.items():
        files.append(File.generated(config, uri, content=getattr(reference, builder)()))
    return files
