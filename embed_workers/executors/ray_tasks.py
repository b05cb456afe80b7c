"""Ray decode actors: shards of the plan → blocks of packed model inputs.

A pool of decode actors takes the plan's shards (``ingest.shards.Shard``: plain
data, no bytes), each shard to an actor with room for it, and reads each where the
actor runs (``ingest.sources.iter_shard``:
the members straight from the source, safety checks, spool + sha256, kind),
decodes and packs each entry (``decode_events`` then
``prepare_events``), and yields pyarrow blocks of rows per modality; markers
ride along. Every row of an entry carries the entry's ``key`` (shard id and
position), because the same bytes may be found by two actors at once and the
committer admits only one copy of an item (``ray_admit``).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from embed_workers.pipeline import (
    ItemDecoded,
    ItemStarted,
    KeyedBatcher,
    Unprepared,
    count_tokens_fn,
    decode_events,
    prepare_events,
)
from embed_workers.prepare import Prepared, Preparer
from ingest.decode.audio import audio_decoder
from ingest.decode.base import DecodeError
from ingest.manifest import ManifestRow
from ingest.shards import Shard
from schemas import MediaItem, Settings
from schemas.extension import EXTENSION_BATCH, Shipment, name_of

MAX_BATCH_WAIT_S = 2.0
# How long a decode actor that is up waits at the start gate for the pool's other
# actors (``StartGate``). Actors start together, so they arrive within seconds of one
# another; the bound only matters when one cannot start (placed on a node that died
# before Ray noticed), and then costs the run this much once.
START_GATE_S = 20.0

log = logging.getLogger(__name__)

ROW_SCHEMA = pa.schema([
    # segment | rejected | decoded | found | source (a Rejected or ContainerEnd of the
    # shard's reading) | shard (a shard read to its end)
    ("event", pa.string()),
    ("key", pa.string()),  # the entry within its shard: ``<shard id>/<position>``
    ("attempt", pa.string()),  # one reading of the shard (a retry reads it again, anew)
    ("node", pa.string()),  # the Ray node that read and decoded it
    ("item_id", pa.string()),
    ("modality", pa.string()),  # set for segments and for dropped (embed-rejected) segments
    ("duration_s", pa.float64()),
    # the pickled record: Prepared (decode → actor), Segment metadata (actor → committer),
    # Rejected or ItemDecoded
    ("blob", pa.binary()),
    ("vector", pa.binary()),  # float32 bytes, after encoding
    ("encoder_node", pa.string()),  # the Ray node of the actor that encoded it
    ("encode_s", pa.float64()),
])


@dataclass(frozen=True, slots=True)
class Found:
    """An entry of a shard was read and hashed: its item (``duplicate``: the same bytes
    came earlier in this task, so only the location is new)."""

    item: MediaItem
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class SourceNote:
    """What reading the shard said besides its entries: a Rejected or a ContainerEnd."""

    record: Any


@dataclass(frozen=True, slots=True)
class ShardRead:
    """Every entry of the shard has been handed on (its events are in earlier rows)."""

    shard_id: str
    entries: int


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """What a decode actor needs besides the shards: how to read, and what to record."""

    settings: Settings
    preparer: Preparer
    manifest: dict[str, ManifestRow]
    record_containers: bool
    batch_views: dict[str, int]  # model views per block, per modality: the encoder's budget
    extensions: Shipment = Shipment()  # the driver's modality extensions, for this node's HOME


GROUPS_MAX = 4096  # inputs of the decode pool: one per shard up to this, then groups


def shard_groups(shards: Sequence[Shard], most: int = GROUPS_MAX) -> list[list[Shard]]:
    """The decode pool's inputs: one shard each, or, past ``most`` shards, groups of them
    dealt round-robin (a Ray Data block per input costs the driver a little each)."""
    count = max(1, min(most, len(shards)))
    return [list(shards[i::count]) for i in range(count)]


def shard_rows(shards: Sequence[Shard]) -> list[dict[str, bytes]]:
    """``shard_groups`` as the rows of the decode pool's input dataset (plain data, no bytes
    of the source)."""
    return [{"shards": pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL)}
            for group in shard_groups(shards)]


class DecodeActor:
    """A decode worker that lives for the whole run: each call reads its input's shards one
    after another and yields their blocks.

    An actor pool and not a task per shard: Ray Data hands each shard to an actor with
    room for it (fewer than ``DECODE_IN_FLIGHT`` calls; among those it prefers one on the
    node that holds the input block, the driver's), so a slow node takes fewer and none
    waits long at the end, and an actor keeps its imports from one shard to the next. (A
    task per shard paid a new process with its imports whenever backpressure left its
    worker idle for a second, and a fixed group of shards per task left the quicker node
    idle at the end: both measured with benchmarks/scale.py.) Ray Data restarts an actor
    that died (on a live node if its own is gone) and retries its calls; a retried call
    reads its shards anew. The pool's actors start reading together (``StartGate``).
    """

    def __init__(self, job: Any, gate: Any = None) -> None:
        job = ray.get(job) if isinstance(job, ray.ObjectRef) else job
        self.job: DecodeJob = replace(job, settings=_one_at_a_time(job.settings))
        self.job.extensions.unpack(self.job.settings.home)
        self.node = ray.get_runtime_context().get_node_id()
        self.count_tokens = count_tokens_fn()
        if gate is not None:
            pass_gate(gate)

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        for blob in table.column("shards").to_pylist():
            yield from decode_shards(pickle.loads(blob), self.job, self.node, self.count_tokens)


def _one_at_a_time(settings: Settings) -> Settings:
    """``settings`` with the audio decoder resolved for a process that decodes one file at
    a time, as a decode actor does (``audio_decoder``: PyAV, where ``auto``). PyAV asked
    for by name on a node without it: the ffmpeg process, with a warning."""
    try:
        chosen = audio_decoder(settings, decoders_here=1)
    except DecodeError as exc:
        log.warning("%s: this node decodes audio in ffmpeg processes", exc)
        chosen = "ffmpeg"
    return settings.model_copy(update={"audio_decoder": chosen})


@ray.remote(num_cpus=0)
class StartGate:
    """Holds the pool's decode actors until all of them are up, so that the first shards
    are shared among them.

    Ray Data hands a shard only to an actor that is up. Without the gate, the actor that
    starts first takes the first shards, and when shards are quick to read (a large tar
    cut into parts of small members) it reads every one of them before the others have
    imported their libraries: a run that was meant to spread over the nodes reads on one.
    Each actor arrives at the end of its constructor and waits until ``expected`` have
    arrived, or ``START_GATE_S`` since it arrived; after that the gate stays open, so an
    actor restarted later (its node died) passes at once.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.opened = asyncio.Event()

    async def arrive(self, timeout_s: float) -> int:
        """Wait for the others (at most ``timeout_s``); return how many had arrived."""
        self.arrived += 1
        if self.arrived >= self.expected:
            self.opened.set()
        try:
            await asyncio.wait_for(self.opened.wait(), timeout_s)
        except TimeoutError:
            self.opened.set()  # the one that cannot start holds no one any longer
        return self.arrived


def start_gate(expected: int) -> Any:
    """A ``StartGate`` for a pool of ``expected`` decode actors, on the driver's node: it
    lives as long as the run, and a worker node that dies does not take it along."""
    here = ray.get_runtime_context().get_node_id()
    return StartGate.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node_id=here, soft=False)).remote(expected)


def pass_gate(gate: Any) -> None:
    """Wait at ``gate`` for the pool's other actors. The gate only balances the start: a
    gate that cannot be reached is logged and passed."""
    try:
        arrived = ray.get(gate.arrive.remote(START_GATE_S), timeout=START_GATE_S + 30)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        log.warning("decode actor: start gate unreachable (%s); starting without it", exc)
        return
    log.debug("decode actor: %d of the pool up at the start gate", arrived)


def decode_shards(shards: list[Shard], job: DecodeJob, node: str,
                  count_tokens: Any) -> Iterator[pa.Table]:
    """Shards → blocks of prepared inputs of one modality (plus markers); reading,
    decoding and packing all run here. Each reading of a shard has its own ``attempt``,
    so rows of a reading cut short never mix with a later one's."""
    blocks = _BlockBuilder(node, job.batch_views)
    for shard in shards:
        blocks.attempt = uuid.uuid4().hex
        for key, event in shard_events(shard, job, count_tokens):
            yield from blocks.add(key, event)
            yield from blocks.due()
    yield from blocks.drain()


def shard_events(shard: Shard, job: DecodeJob,
                 count_tokens: Any) -> Iterator[tuple[str, Any]]:
    """(key, event) for everything reading one shard gives, ending with ``ShardRead``."""
    from ingest.sources import SourceEntry, iter_shard

    settings, position = job.settings, 0
    for record in iter_shard(shard, settings, job.manifest,
                             record_containers=job.record_containers):
        key = f"{shard.shard_id}/{position}"
        position += 1
        if not isinstance(record, SourceEntry):
            yield key, SourceNote(record)
            continue
        with record:
            yield key, Found(record.item, record.duplicate)
            if record.duplicate:
                continue
            decoded = decode_events(record.item, record.path, settings.policy, settings,
                                    count_tokens)
            for event in prepare_events(decoded, job.preparer):
                yield key, event
    yield f"{shard.shard_id}/end", ShardRead(shard.shard_id, position)


class _BlockBuilder:
    """Batches segment rows per modality; markers ride along with the next block."""

    def __init__(self, node: str, batch_views: dict[str, int]) -> None:
        self.node = node
        self.attempt = ""  # set per shard read
        self.batcher: KeyedBatcher[str, dict[str, Any]] = KeyedBatcher(
            lambda m: batch_views.get(m, EXTENSION_BATCH), MAX_BATCH_WAIT_S)
        self.markers: list[dict[str, Any]] = []
        self.marked_at = 0.0  # when the oldest marker waiting came
        self.duration: dict[str, float | None] = {}

    def add(self, key: str, event: Any) -> Iterator[pa.Table]:
        if isinstance(event, ItemStarted):
            self.duration[key] = event.duration_s
            self._mark("started", key, event.item_id, event)
        elif isinstance(event, Prepared):
            segment = event.segment
            row = self._row("segment", key, segment.item_id, event,
                            name_of(segment.modality), self.duration.get(key))
            yield from self._tables(self.batcher.add(row["modality"], row,
                                                     event.views))
        elif isinstance(event, Unprepared):  # settles one segment of its modality
            self._mark("rejected", key, event.rejected.item_id, event.rejected, event.modality)
        elif isinstance(event, ItemDecoded):
            self.duration.pop(key, None)
            self._mark("decoded", key, event.item_id, event)
        elif isinstance(event, Found):
            self._mark("found", key, event.item.item_id, event)
        elif isinstance(event, ShardRead):
            self._mark("shard", key, "", event)
        elif isinstance(event, SourceNote):
            self._mark("source", key, "", event.record)
        else:  # a Rejected of the decoder
            self._mark("rejected", key, event.item_id, event)

    def _mark(self, kind: str, key: str, item_id: str, record: Any, modality: str = "") -> None:
        if not self.markers:
            self.marked_at = time.monotonic()
        self.markers.append(self._row(kind, key, item_id, record, modality, None))

    def _row(self, kind: str, key: str, item_id: str, record: Any, modality: str,
             duration_s: float | None) -> dict[str, Any]:
        return row_for(kind, item_id, record, modality, duration_s) | {
            "key": key, "node": self.node, "attempt": self.attempt}

    def due(self) -> Iterator[pa.Table]:
        yield from self._tables(self.batcher.due())
        # Markers alone wait as long as a batch may: one tiny block per item would cost
        # Ray more than the item.
        if self.markers and not len(self.batcher) \
                and time.monotonic() - self.marked_at >= MAX_BATCH_WAIT_S:
            yield self._table([])

    def drain(self) -> Iterator[pa.Table]:
        yield from self._tables(self.batcher.drain())
        if self.markers:
            yield self._table([])

    def _tables(self, batches: list[tuple[str, list[dict[str, Any]]]]) -> Iterator[pa.Table]:
        for _, rows in batches:
            yield self._table(rows)

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        rows, self.markers = rows + self.markers, []
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def row_for(event: str, item_id: str, record: Any, modality: str,
            duration_s: float | None) -> dict[str, Any]:
    return {"event": event, "key": "", "attempt": "", "node": "", "item_id": item_id,
            "modality": modality,
            "duration_s": duration_s,
            "blob": pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),
            "vector": None, "encoder_node": None, "encode_s": None}
