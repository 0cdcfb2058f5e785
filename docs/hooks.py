"""MkDocs hooks: the generated reference pages (spec/reference.py), and the measuring targets' figures
(docs/data/*.json)."""
from __future__ import annotations

import os
import re

from mkdocs.structure.files import File

GENERATED = {"reference/spec.md": "spec_page", "reference/commands.md": "commands_page"}


def on_files(files, config):
    """Generate each reference page from the code it describes; nothing of it is kept in the repository."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from spec import reference

    for uri, builder in GENERATED.items():
        files.append(File.generated(config, uri, content=getattr(reference, builder)()))
    return files


FIGURES = re.compile(r"<!-- figures: ([a-z0-9_-]+) -->")


def on_page_markdown(markdown, page, config, files):
    """Put each measuring target's last full run (docs/data/<name>.json) where a page says `<!-- figures: name -->`."""
    if "<!-- figures:" not in markdown:
        return markdown
    from benchmarks.figures import render

    return FIGURES.sub(lambda m: render(m.group(1)), markdown)
