"""Staged encode output: parts on disk, and which reading of a shard a replay trusts."""

from __future__ import annotations

import pyarrow as pa

from embed_workers.executors.ray_replay import _chosen_readings
from embed_workers.executors.ray_tasks import ROW_SCHEMA, Found, ShardRead, row_for
from embed_workers.staging import Staging
from schemas import Kind, MediaItem


def rows(event_records: list[tuple[str, str, str, object]]) -> pa.Table:
    return pa.Table.from_pylist(
        [row_for(event, "", record, "", None) | {"key": key, "attempt": attempt}
         for event, key, attempt, record in event_records], schema=ROW_SCHEMA)


def item(name: str) -> MediaItem:
    return MediaItem(name, f"/src/{name}", "/src", name, Kind.TEXT, "text/plain", 1)


def test_a_part_is_whole_named_by_its_rows_and_written_once(tmp_path):
    staging = Staging.at(str(tmp_path / "staging"), "collection", "/src")
    table = rows([("found", "s1/0", "a", Found(item("x.txt")))])
    first = staging.write(table)
    assert staging.write(table) == first and staging.parts() == [first]  # a retry: same part
    assert staging.read(first).num_rows == 1
    (tmp_path / "staging" / "collection").joinpath(
        first.rsplit("/", 2)[-2], ".left-by-a-crash.tmp").write_bytes(b"half")
    assert staging.parts() == [first]  # a temporary is not a part
    staging.clear()
    assert staging.parts() == []


def test_replay_trusts_only_a_reading_whose_every_entry_was_staged(tmp_path):
    staging = Staging.at(str(tmp_path), "collection", "/src")
    # Reading "a" of shard s1 got to its end, but the block with entry 1 was never staged.
    staging.write(rows([("found", "s1/0", "a", Found(item("x.txt"))),
                        ("shard", "s1/end", "a", ShardRead("s1", 2))]))
    assert _chosen_readings(staging, staging.parts()) == {}
    # Reading "b" of the same shard staged both entries and its end.
    staging.write(rows([("found", "s1/0", "b", Found(item("x.txt"))),
                        ("found", "s1/1", "b", Found(item("y.txt"))),
                        ("shard", "s1/end", "b", ShardRead("s1", 2))]))
    assert _chosen_readings(staging, staging.parts()) == {"s1": "b"}
