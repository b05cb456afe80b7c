"""The run report's files and texts, and progress snapshots."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from embed_workers.report import ItemOutcome, Outcome, Progress, ProgressMeter, RunReport
from schemas import Rejected, Stage


def _report() -> RunReport:
    report = RunReport("run-1", "/data/a.tar", "local", "m1", "w2s2c3")
    report.add_outcome(ItemOutcome("i1", "/data/a.tar!/v.mp4", Outcome.INGESTED, "video", 6,
                                   "audio,vision", 4.0))
    report.add_outcome(ItemOutcome("i2", "/data/a.tar!/b.png", Outcome.SKIPPED, "image"))
    bad = Rejected("i3", "/data/a.tar!/bad.mp4", Stage.DECODE, "moov atom not found | x")
    report.rejected.append(bad)
    report.add_outcome(ItemOutcome("i3", bad.uri, Outcome.REJECTED, "video", stage="decode",
                                   reason=bad.reason))
    report.items_completed = 1
    report.items_ingested.update(["audio", "vision"])
    report.segments_written.update({"vision": 2, "audio": 2})
    report.points_written = 6
    report.media_seconds = 4.0
    report.add_stage_time("decode", 1.5)
    return report.finish()


def test_write_json_and_parquet(tmp_path) -> None:
    json_path, parquet_path = _report().write(tmp_path)
    assert json_path.parent == tmp_path / "run-1" == parquet_path.parent
    data = json.loads(json_path.read_text())
    assert (data["items_seen"], data["items_skipped"], data["items_rejected"]) == (3, 1, 1)
    assert data["segments_written"] == {"vision": 2, "audio": 2}
    assert data["rejected"][0]["stage"] == "decode"
    assert data["stage_seconds"]["decode"] == 1.5
    table = pq.read_table(parquet_path).to_pylist()
    assert [r["outcome"] for r in table] == ["ingested", "skipped", "rejected"]
    assert table[2]["reason"].startswith("moov atom")


def test_texts_name_rejections() -> None:
    report = _report()
    assert "bad.mp4" in report.summary() and "1 rejected" in report.summary()
    markdown = report.to_markdown()
    assert "| items rejected | 1 |" in markdown
    assert "moov atom not found \\| x" in markdown  # a pipe in a reason cannot break the table


def test_failed_run_says_why() -> None:
    report = RunReport("r", "s", "local", "m", "p").finish(RuntimeError("store is down"))
    assert report.to_dict()["error"] == "RuntimeError: store is down"
    assert "FAILED" in report.summary()


def test_progress_eta() -> None:
    known = Progress(items_done=10, items_total=30, segments_done=40, elapsed_s=5.0)
    assert known.items_per_s == 2.0 and known.segments_per_s == 8.0 and known.eta_s == 10.0
    unknown = Progress(10, None, 40, 5.0)
    assert unknown.eta_s is None and "unknown total" in unknown.line()


def test_meter_throttles_but_always_reports_the_end() -> None:
    seen: list[Progress] = []
    meter = ProgressMeter(seen.append, total=None, interval_s=3600)
    report = _report()
    meter.tick(report)
    meter.tick(report)
    meter.tick(report, final=True)
    assert len(seen) == 2 and seen[-1].items_done == 3


def test_a_written_report_reads_back_as_it_was(tmp_path):
    from embed_workers.report import ItemOutcome, Outcome, RunReport
    from schemas import Rejected, Stage

    report = RunReport("r1", "/src", "local", "m", "w2s2c3u")
    report.add_outcome(ItemOutcome("a", "/src/a.mp4", Outcome.INGESTED, "video", 3))
    report.add_outcome(ItemOutcome("b", "/src/b.mp4", Outcome.REJECTED, stage="decode",
                                   reason="broken"))
    report.rejected.append(Rejected("b", "/src/b.mp4", Stage.DECODE, "broken"))
    report.segments_written["vision"] += 3
    report.notes.append("a note")
    report.finish()
    report.write(tmp_path)

    again = RunReport.read(tmp_path / "r1")

    assert again.to_dict() == report.to_dict() and again.summary() == report.summary()
