"""The README's performance table holds no figure typed in by hand.

Its rows are written by benchmarks/performance_report.py from the records that
benchmark runs with ``--record`` keep in docs/performance/. These checks render
the records again and compare, look for figures in the section's prose, and
make sure every benchmark the table lists can record itself. Fast: no
benchmark runs here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def load_module(name: str) -> ModuleType:
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_module("performance_report")


def test_the_readme_table_is_what_the_records_render(report: ModuleType) -> None:
    text = README.read_text()
    assert report.MARKERS.search(text), "README.md lost its performance markers"
    assert report.rewrite(text, report.load()) == text, (
        "README.md's performance table differs from docs/performance/: "
        "run python benchmarks/performance_report.py")


def test_the_performance_prose_carries_no_figure(report: ModuleType) -> None:
    text = README.read_text()
    section = text[text.index("## Performance"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    prose = report.MARKERS.sub("", section)
    assert not re.search(r"\d", prose.replace("## Performance", "")), prose


def test_a_benchmark_without_a_record_gets_its_command_not_a_figure(
        report: ModuleType, tmp_path: Path) -> None:
    record = {"what": "decode", "figure": "6.4x less CPU", "where": "2-core CPU",
              "command": "python benchmarks/decode.py", "commit": "abc1234",
              "date": "2026-12-03", "figures": {"ratio": 6.4}}
    (tmp_path / "decode.json").write_text(json.dumps(record))
    table = report.render(report.load(tmp_path))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2  # the header and the one record
    assert "6.4x less CPU" in rows[1] and "abc1234" in rows[1]
    for name, command in report.ORDER.items():
        if name != "decode":
            assert f"- `{name}`: `{command}`" in table


def test_the_records_keep_what_the_table_shows(report: ModuleType) -> None:
    for name, rec in report.load().items():
        assert {"what", "figure", "where", "command", "commit", "date", "figures"} <= set(rec), name
        assert rec["figures"], f"{name}: a record without the numbers behind its figure"


@pytest.mark.parametrize("name", ["encode", "pipeline", "decode", "scale", "store", "memory",
                                  "members", "load"])
def test_every_listed_benchmark_can_record_itself(report: ModuleType, name: str) -> None:
    source = (REPO / "benchmarks" / f"{name}.py").read_text()
    assert "record.add_flag(" in source and "record.save(" in source
    assert any(command.startswith(f"python benchmarks/{name}.py")
               for command in report.ORDER.values())
