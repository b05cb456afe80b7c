"""The run report (what a run did, per item and in total) and progress updates.

A run ends with a ``RunReport``: counts, rejections with stage and reason,
seconds per stage and throughput. ``write`` puts a JSON summary and a Parquet
table of per-item outcomes under ``<runs_path>/<run_id>/``; ``to_markdown`` is
what the Prefect artifact shows and ``summary`` what the CLI prints.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import Rejected, Stage


class Outcome(StrEnum):
    INGESTED = "ingested"
    SKIPPED = "skipped"  # already complete in the store
    DUPLICATE = "duplicate"  # same bytes as another item; location added
    REJECTED = "rejected"
    UNCHANGED = "unchanged"  # settled by an earlier run and unchanged since: not read


# Fields that name a run, not count its work (``RunReport.absorb`` keeps them).
IDENTITY_FIELDS = frozenset({"run_id", "source", "executor", "model_id", "policy", "started",
                             "finished", "error"})
STAGES = ("plan", "source", "decode", "preprocess", "encode", "store")


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """One row of the per-item table."""

    item_id: str
    uri: str
    outcome: Outcome
    kind: str = ""
    segments: int = 0
    modalities: str = ""  # comma-separated, e.g. "audio,vision"
    duration_s: float | None = None
    stage: str = ""
    reason: str = ""
    decoder: str = ""  # the frame backend that decoded a video (nvdec, pyav, ffmpeg)
    audio_decoder: str = ""  # what decoded its sound, an audio file's or a soundtrack (pyav, ffmpeg)


ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("uri", pa.string()), ("outcome", pa.string()),
    ("kind", pa.string()), ("segments", pa.int64()), ("modalities", pa.string()),
    ("duration_s", pa.float64()), ("stage", pa.string()), ("reason", pa.string()),
    ("decoder", pa.string()), ("audio_decoder", pa.string()),
])


@dataclass
class RunReport:
    run_id: str
    source: str
    executor: str
    model_id: str
    policy: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    items_seen: int = 0
    items_skipped: int = 0
    items_duplicate: int = 0
    items_unchanged: int = 0  # listed objects (files or whole archives) the ledger settled
    items_from_staging: int = 0  # committed from an earlier run's staged output: not read again
    source_bytes_read: int = 0  # content bytes read (hashed) from the source
    objects_listed: int = 0  # top-level objects the plan listed (files, archives)
    shards: int = 0  # shards the plan left to do
    manifest: str | None = None  # the plan's manifest (Parquet), with a ledger
    decode_nodes: dict[str, int] = field(default_factory=dict)  # Ray node → entries read
    encode_nodes: dict[str, int] = field(default_factory=dict)  # Ray node → segments encoded
    video_decoders: dict[str, int] = field(default_factory=dict)  # frame backend → videos
    audio_decoders: dict[str, int] = field(default_factory=dict)  # pyav/ffmpeg → items with sound
    notes: list[str] = field(default_factory=list)
    items_ingested: Counter[str] = field(default_factory=Counter)  # per modality
    items_completed: int = 0
    segments_written: Counter[str] = field(default_factory=Counter)  # per modality
    points_written: int = 0
    points_removed: int = 0  # of old versions of files changed in place
    rejected: list[Rejected] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    media_seconds: float = 0.0
    error: str | None = None
    outcomes: list[ItemOutcome] = field(default_factory=list)

    # --- recording ------------------------------------------------------------
    def add_outcome(self, outcome: ItemOutcome) -> None:
        self.outcomes.append(outcome)
        self.items_seen += 1
        if outcome.decoder:
            self.video_decoders[outcome.decoder] = self.video_decoders.get(outcome.decoder, 0) + 1
        if outcome.audio_decoder:
            self.audio_decoders[outcome.audio_decoder] = \
                self.audio_decoders.get(outcome.audio_decoder, 0) + 1
        if outcome.outcome is Outcome.SKIPPED:
            self.items_skipped += 1
        elif outcome.outcome is Outcome.DUPLICATE:
            self.items_duplicate += 1

    def add_stage_time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def absorb(self, other: RunReport) -> None:
        """Add what another process recorded for this run (a Ray run's committer): counts
        and times add up, lists and notes extend; what names the run stays this one's."""
        for f in fields(self):
            if f.name in IDENTITY_FIELDS:
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
            elif isinstance(mine, int | float) and not isinstance(mine, bool):
                setattr(self, f.name, mine + theirs)
            elif mine is None:
                setattr(self, f.name, theirs)

    def finish(self, error: BaseException | None = None) -> RunReport:
        self.finished = datetime.now(UTC)
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
        return self

    # --- derived ------------------------------------------------------------------
    @property
    def wall_seconds(self) -> float:
        end = self.finished or datetime.now(UTC)
        return max((end - self.started).total_seconds(), 1e-9)

    @property
    def segments_total(self) -> int:
        return sum(self.segments_written.values())

    def throughput(self) -> dict[str, float]:
        wall = self.wall_seconds
        return {
            "items_per_s": self.items_completed / wall,
            "segments_per_s": self.segments_total / wall,
            "media_s_per_s": self.media_seconds / wall,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "source": self.source, "executor": self.executor,
            "model_id": self.model_id, "policy": self.policy,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "wall_seconds": self.wall_seconds,
            "items_seen": self.items_seen, "items_skipped": self.items_skipped,
            "items_duplicate": self.items_duplicate, "items_completed": self.items_completed,
            "items_unchanged": self.items_unchanged, "source_bytes_read": self.source_bytes_read,
            "items_from_staging": self.items_from_staging,
            "objects_listed": self.objects_listed, "shards": self.shards,
            "manifest": self.manifest, "decode_nodes": dict(self.decode_nodes),
            "encode_nodes": dict(self.encode_nodes),
            "video_decoders": dict(self.video_decoders),
            "audio_decoders": dict(self.audio_decoders),
            "notes": list(self.notes),
            "items_ingested": dict(self.items_ingested),
            "items_rejected": len(self.rejected_items()),
            "segments_written": dict(self.segments_written),
            "points_written": self.points_written, "points_removed": self.points_removed,
            "rejected": [_rejected_dict(r) for r in self.rejected],
            "stage_seconds": dict(self.stage_seconds),
            "media_seconds": self.media_seconds,
            "throughput": self.throughput(),
            "error": self.error,
        }

    def rejected_items(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.outcome is Outcome.REJECTED]

    # --- output ------------------------------------------------------------------
    def write(self, runs_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``items.parquet`` into ``runs_dir/<run_id>/``."""
        folder = Path(runs_dir) / self.run_id
        folder.mkdir(parents=True, exist_ok=True)
        json_path, parquet_path = folder / "report.json", folder / "items.parquet"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        rows = [asdict(o) | {"outcome": o.outcome.value} for o in self.outcomes]
        pq.write_table(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), parquet_path)
        return json_path, parquet_path

    @classmethod
    def read(cls, folder: str | Path) -> RunReport:
        """A report as ``write`` left it in ``folder`` (``report.json``, ``items.parquet``)."""
        folder = Path(folder)
        d = json.loads((folder / "report.json").read_text())
        plain = {f.name for f in fields(cls)} - {"started", "finished", "rejected", "outcomes",
                                                  "items_ingested", "segments_written"}
        report = cls(**{k: d[k] for k in plain if k in d})
        report.started = datetime.fromisoformat(d["started"])
        report.finished = datetime.fromisoformat(d["finished"]) if d.get("finished") else None
        report.items_ingested = Counter(d.get("items_ingested", {}))
        report.segments_written = Counter(d.get("segments_written", {}))
        report.rejected = [Rejected(r["item_id"], r["uri"], Stage(r["stage"]), r["reason"])
                           for r in d.get("rejected", [])]
        items = folder / "items.parquet"
        if items.is_file():
            report.outcomes = [ItemOutcome(**{**row, "outcome": Outcome(row["outcome"])})
                               for row in pq.read_table(items).to_pylist()]
        return report

    def summary(self) -> str:
        """The CLI's text for this run (``summary_text`` of ``to_dict()``)."""
        return summary_text(self.to_dict())

    def to_markdown(self) -> str:
        t = self.throughput()
        rows = [
            ("items seen", self.items_seen), ("items ingested", self.items_completed),
            ("items skipped", self.items_skipped), ("duplicates", self.items_duplicate),
            ("unchanged, not read", self.items_unchanged),
            ("committed from staged output", self.items_from_staging),
            ("source bytes read", self.source_bytes_read),
            ("items rejected", len(self.rejected_items())), ("points written", self.points_written),
            ("media seconds", f"{self.media_seconds:.1f}"), ("wall seconds", f"{self.wall_seconds:.1f}"),
            ("media s per wall s", f"{t['media_s_per_s']:.2f}"),
            ("video decoders", _counts(self.video_decoders)),
            ("audio decoders", _counts(self.audio_decoders)),
        ]
        rows += [(f"{k} seconds", f"{v:.1f}") for k, v in self.stage_seconds.items()]
        text = [f"# Ingest run `{self.run_id}`", "",
                f"Source `{self.source}`, executor `{self.executor}`, model `{self.model_id}`, "
                f"policy `{self.policy}`.", ""]
        if self.error:
            text += [f"**Failed:** {self.error}", ""]
        text += [f"Note: {n}" for n in self.notes] + ([""] if self.notes else [])
        text += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        if self.rejected:
            text += ["", "## Rejected", "", "| stage | uri | reason |", "|---|---|---|"]
            text += [f"| {r.stage} | `{r.uri}` | {_md_cell(r.reason)} |" for r in self.rejected[:100]]
        return "\n".join(text) + "\n"


def summary_text(report: dict[str, Any]) -> str:
    """A run's summary from its ``to_dict()`` form: what the CLI prints at the end of a
    run, and what the runs page shows for a saved ``report.json``."""
    r, t = report, report["throughput"]
    lines = [
        f"run {r['run_id']} ({r['executor']}, {r['model_id']}, {r['policy']})"
        + (f"  FAILED: {r['error']}" if r.get("error") else ""),
        f"  items: {r['items_seen']} seen, {r['items_completed']} ingested, "
        f"{r['items_skipped']} skipped (already stored), {r['items_duplicate']} duplicate, "
        f"{r['items_rejected']} rejected; {r['items_unchanged']} unchanged since the last "
        f"run (not read); {r['items_from_staging']} committed from an earlier run's staged "
        f"output; {r['source_bytes_read']} source bytes read",
        f"  plan: {r['objects_listed']} objects listed, {r['shards']} shards to do",
        f"  points: {r['points_written']} written, {r['points_removed']} of changed files' "
        f"old versions removed; segments {_counts(r['segments_written'])}",
        f"  media: {r['media_seconds']:.1f} s in {r['wall_seconds']:.1f} s wall "
        f"({t['media_s_per_s']:.2f} media s/s, {t['segments_per_s']:.1f} segments/s)",
        "  stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items()),
        f"  video decoded by: {_counts(r.get('video_decoders', {}))}; audio by: "
        f"{_counts(r.get('audio_decoders', {}))}",
    ]
    lines += [f"  note: {n}" for n in r["notes"]]
    rejected = r["rejected"]
    lines += [f"  rejected [{x['stage']}] {x['uri']}: {x['reason']}" for x in rejected[:20]]
    if len(rejected) > 20:
        lines.append(f"  ... and {len(rejected) - 20} more (see items.parquet)")
    return "\n".join(lines)


def _rejected_dict(r: Rejected) -> dict[str, str]:
    return {"item_id": r.item_id, "uri": r.uri, "stage": str(r.stage), "reason": r.reason}


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


# --- progress ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot handed to the progress callback."""

    items_done: int  # seen and settled: ingested, skipped, duplicate or rejected
    items_total: int | None  # None: unknown (archives are streamed, not listed first)
    segments_done: int
    elapsed_s: float

    @property
    def items_per_s(self) -> float:
        return self.items_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def segments_per_s(self) -> float:
        return self.segments_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.items_total is None or self.items_per_s <= 0:
            return None
        return max(self.items_total - self.items_done, 0) / self.items_per_s

    def line(self) -> str:
        total = str(self.items_total) if self.items_total is not None else "?"
        eta = f"ETA {self.eta_s:.0f} s" if self.eta_s is not None else "ETA unknown total"
        return (f"{self.items_done}/{total} items, {self.segments_done} segments | "
                f"{self.items_per_s:.1f} items/s, {self.segments_per_s:.1f} segments/s | {eta}")


ProgressCallback = Callable[[Progress], None]


class ProgressMeter:
    """Calls the callback at most every ``interval_s`` (and once more at the end)."""

    def __init__(self, callback: ProgressCallback | None, total: int | None,
                 interval_s: float = 2.0) -> None:
        self.callback, self.total, self.interval_s = callback, total, interval_s
        self.started = time.monotonic()
        self._last = float("-inf")

    def tick(self, report: RunReport, *, final: bool = False) -> None:
        self.tick_counts(report.items_seen, report.segments_total, final=final)

    def tick_counts(self, items_seen: int, segments: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not final and now - self._last < self.interval_s):
            return
        self._last = now
        self.callback(Progress(items_seen, self.total, segments, now - self.started))
