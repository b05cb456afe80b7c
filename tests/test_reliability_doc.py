"""docs/reliability.md holds no figure typed in by hand.

Its figure tables sit between ``<!-- figures:NAME:start/end -->`` markers and
are written by benchmarks/reliability_report.py from the figures the
reliability tests and benchmarks/load.py measured; the figures themselves are
kept in the doc's ``data`` section. These checks render that data again and
compare, look for loss figures outside the generated sections, and make sure
every figure a reliability test records has a row (so a new fault test cannot
be left out of the doc). Fast: nothing here runs the suite.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
RELIABILITY_TESTS = sorted((REPO / "tests" / "reliability").glob("*.py"))
# The fixture's call, not a method of the same name (``tally.figures("prefix")``).
FIGURE_CALL = re.compile(r"""(?<![.\w])figures\(\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def report() -> ModuleType:
    """benchmarks/reliability_report.py, loaded from its path (benchmarks is no package)."""
    path = REPO / "benchmarks" / "reliability_report.py"
    spec = importlib.util.spec_from_file_location("reliability_report", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def recorded_names() -> set[str]:
    """Every figure name a reliability test records (``figures("name", ...)``)."""
    return {name for path in RELIABILITY_TESTS for name in FIGURE_CALL.findall(path.read_text())}


def outside_sections(report: ModuleType, doc: str) -> str:
    return report.MARKERS.sub("", doc)


def example_data() -> dict[str, Any]:
    """A figures dict of every shape the tests write: plain, with cases, failed, lossy."""
    fault = {"items": 48, "points_expected": 96, "points_stored": 93, "points_lost": 3,
             "points_duplicated": 0, "points_stray": 0, "test_passed": False,
             "run_finished_by_itself": True, "items_completed_by_killed_run": 45,
             "killed_run_s": 19.61, "rerun_s": 0.02, "rerun_skipped_items": 45}
    clients = {str(n): {"clients": n, "points": 1500, "queries": 12 * n, "failed_queries": 0,
                        "points_stored": 1500, "points_lost": 0, "points_stray": 0,
                        "test_passed": True} for n in (1, 8, 32)}
    return {"figures": {"ray_encode_worker_killed": fault,
                        "concurrent_searches": {"cases": clients},
                        "a_new_fault": {"widgets_lost": 0, "test_passed": True},
                        "_session": {"cpus": 2, "machine": "x86_64", "system": "Linux",
                                     "finished": "2026-01-01"}},
            "load": None,
            "run": {"command": "python benchmarks/reliability_report.py",
                    "suite": {"seconds": 1.0, "outcome": "1 passed"}}}


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_the_doc_is_exactly_what_the_renderer_makes_of_its_own_figures(report, doc) -> None:
    sections = report.read_sections(doc)
    assert set(sections) == set(report.SECTIONS)
    data = report.read_data(doc)
    assert data["figures"], "the doc's data section holds no figures"
    assert report.render_doc(doc, data) == doc, (
        "a generated section differs from its figures: regenerate with "
        "benchmarks/reliability_report.py instead of editing it")


def test_every_generated_table_has_a_header_and_rows_of_its_width(report, doc) -> None:
    for name, text in report.read_sections(doc).items():
        lines = table_lines(text)
        if name in ("run", "data"):
            assert not lines, f"{name} is not a table section"
            continue
        assert lines, f"section {name} has no table"
        widths = {line.count(" | ") for line in lines}
        assert len(widths) <= 2, f"{name}: rows of different widths"  # load has two tables


def test_an_example_figures_dict_renders_failures_losses_and_new_figures(report) -> None:
    data = example_data()
    summary = report.render_summary(data)
    ray = next(line for line in table_lines(summary) if "`ray_encode_worker_killed`" in line)
    assert "**no**" in ray and "| 3 of 96 |" in ray  # a failed, lossy run reads as one
    concurrent = next(line for line in table_lines(summary) if "`concurrent_searches`" in line)
    assert "| yes |" in concurrent and "1 / 8 / 32 threads" in concurrent
    assert "(new) `a_new_fault`" in summary  # unknown to the renderer, still shown
    assert report.NOT_MEASURED in summary  # the figures this example lacks say so
    faults = report.render_faults(data)
    assert "**test failed**" in faults and "45 of 48" in faults
    assert report.NOT_MEASURED in report.render_load(data)
    header = table_lines(summary)[0]
    assert all(line.count(" | ") == header.count(" | ") for line in table_lines(summary))


def test_the_data_section_survives_a_round_trip(report, doc) -> None:
    data = example_data()
    data["run"]["command"] = "python x.py --figures /tmp/f.json"  # "--" inside a comment
    rendered = report.render_doc(doc, data)
    assert report.read_data(rendered) == data
    assert "--figures" not in report.read_sections(rendered)["data"]
    assert report.render_doc(rendered, copy.deepcopy(data)) == rendered


def test_no_loss_figure_outside_the_generated_sections(report, doc) -> None:
    prose = outside_sections(report, doc)
    assert "points lost" not in prose.lower()
    assert not re.search(r"points?_lost\s*=", prose)
    for line in table_lines(prose):  # a table by hand may hold no number
        assert not re.search(r"\d", line), f"hand-written figure in a table: {line}"


def test_no_reliability_test_records_a_literal_loss() -> None:
    for path in RELIABILITY_TESTS:
        found = re.findall(r"\w*_lost\s*=\s*\d+\b", path.read_text())
        assert not found, f"{path.name}: {found} (count it in the store instead)"


def test_every_figure_a_reliability_test_records_has_a_row_in_the_doc(report, doc) -> None:
    names = recorded_names()
    assert len(names) >= 5, f"the grep for figures(...) found too little: {names}"
    generated = "".join(v for k, v in report.read_sections(doc).items() if k != "data")
    missing = sorted(n for n in names if f"`{n}`" not in generated)
    assert not missing, f"figures with no row in docs/reliability.md: {missing}"
    unknown = sorted(names - report.listed_names())
    assert not unknown, f"add a row for {unknown} to benchmarks/reliability_report.py"
