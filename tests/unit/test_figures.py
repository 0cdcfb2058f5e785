"""The measuring targets' figures: what a full run writes to docs/data/, what a partial run leaves alone, and what
the documentation renders from it (the last run's table, the range over the runs kept)."""
from __future__ import annotations

import importlib.util
import json

from benchmarks import figures as fig
from tests.conftest import REPO


def _run(directory, ratio, met=True, partial=False, notes=()):
    record = fig.Figures("perf", "make perf", "The embedded server")
    record.add("gRPC p50 / in-process p50", ratio, "{:.3f}", "<= 1.05", met, f"{ratio * 30:.2f} ms vs 30.00 ms")
    record.add("soak", "passed", detail="0 failed")
    for note in notes:
        record.note(note)
    return record.save(partial=partial, directory=directory)


def test_a_full_run_is_kept_with_its_date_commit_and_machine_and_a_partial_one_is_not(tmp_path):
    assert _run(tmp_path, 1.121, partial=True) is None and not list(tmp_path.iterdir())
    path = _run(tmp_path, 1.121, met=False, notes=["one JPEG"])
    data = json.loads(path.read_text())
    run = data["runs"][-1]
    assert data["target"] == "make perf" and len(data["runs"]) == 1
    assert run["machine"]["cpus"] >= 1 and run["machine"]["python"] and run["measured_at"].endswith("UTC")
    assert run["rows"][0]["value"] == 1.121 and run["rows"][0]["measured"] == "1.121"
    assert run["rows"][1]["measured"] == "passed" and run["rows"][1]["value"] is None
    page = fig.render("perf", tmp_path)
    assert "Measured by `make perf` on " + run["measured_at"] in page
    assert "| gRPC p50 / in-process p50 | **1.121** | <= 1.05 | **no** |" in page
    assert "range over" not in page, "one run has no range"
    assert "one JPEG" in page


def test_the_page_shows_the_last_run_and_each_figures_range_over_the_runs_kept(tmp_path):
    for ratio in (1.061, 1.144, 1.085):
        _run(tmp_path, ratio, met=ratio <= 1.05)
    page = fig.render("perf", tmp_path)
    assert "| **1.085** |" in page and "| **1.144** |" not in page, "the table is the last run's"
    assert "range over the last 3 runs" in page and "1.061 to 1.144 (3 runs)" in page
    for ratio in [1.0 + k / 100 for k in range(fig.KEPT + 2)]:
        _run(tmp_path, ratio)
    assert len(json.loads((tmp_path / "perf.json").read_text())["runs"]) == fig.KEPT


def test_a_missing_or_unreadable_file_is_said_or_replaced_never_a_crash(tmp_path):
    assert "Not measured in this checkout yet" in fig.render("perf", tmp_path)
    (tmp_path / "perf.json").write_text("{not json")
    _run(tmp_path, 1.2)
    assert len(json.loads((tmp_path / "perf.json").read_text())["runs"]) == 1


def test_the_documentation_renders_each_marker_from_its_data_file():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown("before\n\n<!-- figures: no-such-target -->\n\nafter\n", None, None, None)
    assert "docs/data/no-such-target.json" in page and "<!--" not in page and page.endswith("after\n")
    markers = set()
    for md in (REPO / "docs").rglob("*.md"):
        markers |= set(hooks.FIGURES.findall(md.read_text()))
    assert markers == {"perf", "perf-harness", "perf-generator", "perf-cost", "reliability"}, markers
