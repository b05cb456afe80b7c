"""Commit what an earlier run staged and never committed, before the plan (``staging``).

A driver that died leaves its encode actors' parts in the staging folder of
its source. The next run replays those parts through the same admission and
collector as live results, so their items are stored and get ledger entries
without being read or encoded again; the plan that follows then anti-joins
the ledger and leaves only the rest to read.

Which rows count: a shard may have been read more than once (Ray retried a
task, or the driver read a lost shard again), and each reading has its own
``attempt``. Per shard, only one reading whose every entry was staged is
replayed, so an item never mixes the segments of two readings. Items that reading did not finish
(a block lost with the driver) are forgotten, and this run reads them again.
An archive is recorded as settled only when its shard settled completely here.
"""

from __future__ import annotations

import pickle
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from embed_workers.executors import RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.ray_admit import Admission, shard_of
from embed_workers.staging import Staging
from ingest.sources import ContainerEnd

PICK_COLUMNS = ["event", "key", "attempt", "blob"]


def replay_staged(ctx: RunContext, collector: Collector, staging: Staging) -> None:
    """Commit the complete items of the parts found; report how many."""
    parts = staging.parts()
    if not parts:
        return
    started = time.perf_counter()
    chosen = _chosen_readings(staging, parts)
    # Replayed rows read nothing from the source and encode nothing: the bytes and
    # stage times they carry were spent by the run that staged them.
    bytes_before, stages_before = collector.report.source_bytes_read, dict(
        collector.report.stage_seconds)
    completed_before = collector.report.items_completed
    admission = Admission(ctx, collector)
    archives: list[pa.Table] = []
    for part in parts:
        table = _rows_of(staging.read(part), chosen)
        admission.handle(table.filter(pc.invert(_is_container_end(table))))
        archives.append(table.filter(_is_container_end(table)))
    unsettled = admission.unsettled_shards()
    for item_id in list(collector.items):
        collector.forget(item_id)
    for table in archives:  # an archive settles only with every item of its shard
        keep = [shard_of(k) not in unsettled for k in table.column("key").to_pylist()]
        admission.handle(table.filter(pa.array(keep, pa.bool_())))
    collector.settle()
    report = collector.report
    report.source_bytes_read, report.stage_seconds = bytes_before, stages_before
    report.items_from_staging = report.items_completed - completed_before
    report.add_stage_time("staged", time.perf_counter() - started)
    report.notes.append(f"committed {report.items_from_staging} items an earlier run had "
                        f"encoded and staged ({len(parts)} parts) without reading them again")


def _chosen_readings(staging: Staging, parts: list[str]) -> dict[str, str]:
    """Per shard, the one reading (attempt) to replay: one whose every entry was staged.

    A reading's end marker may be staged while a block with an entry's only rows was
    not (the blocks of one reading pass through different actors), so "got to its
    end" is not enough: each position up to the end's count must have its ``found``
    or ``source`` row. A shard with no such reading is read again by this run.
    """
    entries: dict[tuple[str, str], int] = {}
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for part in parts:
        table = staging.read(part, PICK_COLUMNS)
        for event, key, attempt, blob in zip(
                *(table.column(c).to_pylist() for c in PICK_COLUMNS), strict=True):
            reading = (shard_of(key), attempt)
            if event == "shard":
                entries[reading] = pickle.loads(blob).entries
            elif event in ("found", "source"):
                seen[reading].add(key)
    chosen: dict[str, str] = {}
    for (shard, attempt), count in sorted(entries.items()):
        if len(seen[(shard, attempt)]) == count and shard not in chosen:
            chosen[shard] = attempt
    return chosen


def _rows_of(table: pa.Table, chosen: dict[str, str]) -> pa.Table:
    keys, attempts = table.column("key").to_pylist(), table.column("attempt").to_pylist()
    keep = [chosen.get(shard_of(k)) == a for k, a in zip(keys, attempts, strict=True)]
    table = table.filter(pa.array(keep, pa.bool_()))
    return table.set_column(table.schema.get_field_index("encode_s"), "encode_s",
                            pa.nulls(len(table), pa.float64()))


def _is_container_end(table: pa.Table) -> pa.Array:
    flags = [event == "source" and isinstance(pickle.loads(blob), ContainerEnd)
             for event, blob in zip(table.column("event").to_pylist(),
                                    table.column("blob").to_pylist(), strict=True)]
    return pa.array(flags, pa.bool_())
