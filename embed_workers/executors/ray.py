"""The Ray executor: Ray Data streaming, decode on CPU tasks, encode in an actor pool.

    driver feeder thread ─► work queue (Ray actor, bounded)
        ─► read tasks = decode tasks (CPU; ``decode_events`` then ``prepare_events``:
           decoded and preprocessed; blocks of model tensors per modality)
        ─► map_batches(EncodeActor, compute=ActorPoolStrategy)  (model built once per
           actor; it only stacks the tensors and runs the model)
        ─► driver iterates the output and writes through the sink (the only store owner)

Preprocessing (resize/crop/normalise, fbank, tokens) runs in the decode tasks,
so a GPU actor never waits on CPU work. Vision tensors cross the object store
as float16 when the model computes in bf16/fp16 (``prepare.wire_dtypes``);
the actors send back vectors and segment metadata only.

Listing and planning stay on the driver: the embedded store is locked to one
process and the source may be a stream (a tar) that only one reader can walk.
The bounded work queue plus Ray Data's streaming backpressure keep memory and
spooled disk flat.

Where the bytes are: decode tasks read the entry's path (a folder file or the
driver's spool file), so they are pinned to the driver's node with the
``ray.io/node-id`` label; encode actors go anywhere (GPU nodes). Decode
therefore scales with the driver node's cores. To spread decode over a
multi-node cluster, the source must be on a filesystem every node mounts at
the same path; passing bytes through the object store was left out on purpose
(it would copy every item through the driver's memory).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data import ActorPoolStrategy, DataContext
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Empty, Full, Queue

from embed_workers.executors import EncoderArgs, RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.feed import Failure, FeedDone, feed, planned_stream
from embed_workers.model import resolve_dtype
from embed_workers.pipeline import (
    ItemDecoded,
    ItemStarted,
    KeyedBatcher,
    Unprepared,
    count_tokens_fn,
    decode_events,
    encode_prepared,
    prepare_events,
)
from embed_workers.prepare import Prepared, Preparer
from embed_workers.preprocess import PreprocessOptions
from ingest.plan import Action, PlannedEntry
from schemas import Modality, Segment, Settings, spec

POLL_S = 0.5
MAX_BATCH_WAIT_S = 2.0
QUEUE_PER_TASK = 2

ROW_SCHEMA = pa.schema([
    ("event", pa.string()),  # segment | rejected | decoded
    ("item_id", pa.string()),
    ("modality", pa.string()),  # set for segments and for dropped (embed-rejected) segments
    ("duration_s", pa.float64()),
    # the pickled record: Prepared (decode → actor), Segment metadata (actor → driver),
    # Rejected or ItemDecoded
    ("blob", pa.binary()),
    ("vector", pa.binary()),  # float32 bytes, after encoding
    ("encode_s", pa.float64()),
])


# --- Ray lifecycle ------------------------------------------------------------------------


def connect(settings: Settings) -> bool:
    """Join RAY_ADDRESS / settings.ray_address, else start a local Ray; True if we started it.

    A local Ray gets at least one CPU more than the decode tasks and actors
    ask for: a pool whose CPUs add up to all of the machine's leaves the read
    task none, and Ray Data then waits forever.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    if settings.ray_address:
        ray.init(address=settings.ray_address, include_dashboard=False, log_to_driver=False)
        return True
    cpus = max(os.cpu_count() or 1, settings.decode_workers + settings.encode_actors + 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def cpu_shares(total_cpus: float, decode_tasks: int, actors: int) -> tuple[float, float]:
    """CPUs per decode task and per CPU actor, fractional when the cluster is small."""
    if decode_tasks + actors + 1 <= total_cpus:
        return 1.0, 1.0
    share = max(total_cpus / (decode_tasks + actors + 1), 0.05)
    return share, share


def run_ray(ctx: RunContext) -> None:
    collector = Collector(ctx)
    stream = _until_first_ingest(planned_stream(ctx), collector)
    if stream is None:  # nothing new: a scheduled rerun does not pay for Ray's start-up
        collector.close()
        return
    started_here = connect(ctx.settings)
    try:
        _run(ctx, stream, collector)
    finally:
        if started_here:
            ray.shutdown()


def _until_first_ingest(stream: Iterator[PlannedEntry],
                        collector: Collector) -> Iterator[PlannedEntry] | None:
    """Settle decisions up to the first entry to ingest; None when there is none."""
    started = time.perf_counter()
    try:
        for planned in stream:
            if planned.action is Action.INGEST:
                return _prepend(planned, stream)
            collector.planned(planned)
        return None
    finally:
        collector.report.add_stage_time("source", time.perf_counter() - started)


def _prepend(first: PlannedEntry, rest: Iterator[PlannedEntry]) -> Iterator[PlannedEntry]:
    """``first`` then ``rest``; closing it closes ``rest`` (which releases its spooled files)."""
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


# --- decode tasks -------------------------------------------------------------------------


class WorkQueueDatasource(Datasource):
    """``n`` read tasks that take items from the driver's work queue until an end marker."""

    def __init__(self, work: Queue, tasks: int, settings: Settings, preparer: Preparer) -> None:
        super().__init__()
        self.work, self.tasks, self.settings, self.preparer = work, tasks, settings, preparer

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        work, settings, preparer = self.work, self.settings, self.preparer
        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(lambda: decode_from_queue(work, settings, preparer), meta,
                         schema=ROW_SCHEMA)
                for _ in range(self.tasks)]


def decode_from_queue(work: Queue, settings: Settings, preparer: Preparer) -> Iterator[pa.Table]:
    """One decode task: items from the queue → blocks of prepared inputs of one modality
    (plus markers); decoding and preprocessing both run here."""
    count_tokens = count_tokens_fn()
    blocks = _BlockBuilder()
    while True:
        try:
            job = work.get(timeout=POLL_S)
        except Empty:
            job = ()
        if job is None:
            break
        if job:
            item, path = job
            decoded = decode_events(item, Path(path), settings.policy, settings, count_tokens)
            for event in prepare_events(decoded, preparer):
                yield from blocks.add(event)
        yield from blocks.due()
    yield from blocks.drain()


class _BlockBuilder:
    """Batches segment rows per modality; markers ride along with the next block."""

    def __init__(self) -> None:
        self.batcher: KeyedBatcher[str, dict[str, Any]] = KeyedBatcher(
            lambda m: spec(m).batch_size, MAX_BATCH_WAIT_S)
        self.markers: list[dict[str, Any]] = []
        self.duration: dict[str, float | None] = {}

    def add(self, event: Any) -> Iterator[pa.Table]:
        if isinstance(event, ItemStarted):
            self.duration[event.item_id] = event.duration_s
        elif isinstance(event, Prepared):
            segment = event.segment
            row = _row("segment", segment.item_id, event, Modality(segment.modality).value,
                       self.duration.get(segment.item_id))
            yield from self._tables(self.batcher.add(row["modality"], row))
        elif isinstance(event, Unprepared):  # settles one segment of its modality
            self.markers.append(_row("rejected", event.rejected.item_id, event.rejected,
                                     event.modality, None))
        else:
            if isinstance(event, ItemDecoded):
                self.duration.pop(event.item_id, None)
            self.markers.append(_row("decoded" if isinstance(event, ItemDecoded) else "rejected",
                                     event.item_id, event, "", None))

    def due(self) -> Iterator[pa.Table]:
        yield from self._tables(self.batcher.due())
        if self.markers and not len(self.batcher):
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


def _row(event: str, item_id: str, record: Any, modality: str,
         duration_s: float | None) -> dict[str, Any]:
    return {"event": event, "item_id": item_id, "modality": modality,
            "duration_s": duration_s, "blob": pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),
            "vector": None, "encode_s": None}


# --- encode actors ------------------------------------------------------------------------


class EncodeActor:
    """Builds the Encoder once per actor; encodes prepared rows per modality, passes markers.

    Rows arrive preprocessed (``Prepared``): the actor stacks and runs the
    model, and sends back each segment's metadata with its vector.

    An encoder handed to ``run_ingest`` is shipped to the actors as is (fine for
    small models; for large ones leave it to the actors to load their own).
    """

    def __init__(self, args: EncoderArgs, settings: Settings, model_id: str,
                 encoder: Any = None) -> None:
        self.encoder = encoder if encoder is not None else args.build(settings)
        if self.encoder.model_id != model_id:
            raise RuntimeError(f"actor built {self.encoder.model_id!r}, the run uses {model_id!r}")

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        out = [r for r in rows if r["event"] != "segment"]
        by_modality: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["event"] == "segment":
                by_modality.setdefault(r["modality"], []).append(r)
        for modality, group in by_modality.items():
            out += self._encode(modality, group)
        return pa.Table.from_pylist(out, schema=ROW_SCHEMA)

    def _encode(self, modality: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        duration = {r["item_id"]: r["duration_s"] for r in rows}
        started = time.perf_counter()
        kept, vectors, rejected = encode_prepared(self.encoder, [pickle.loads(r["blob"]) for r in rows])
        spent = time.perf_counter() - started
        out = [{**_row("segment", s.item_id, s, modality, duration[s.item_id]),
                "vector": v.astype(np.float32).tobytes()} for s, v in zip(kept, vectors, strict=True)]
        out += [_row("rejected", r.item_id, r, modality, None) for r in rejected]
        out[0]["encode_s"] = spent
        return out


# --- the driver ---------------------------------------------------------------------------


def _run(ctx: RunContext, stream: Iterator[PlannedEntry], collector: Collector) -> None:
    settings = ctx.settings
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    tasks = settings.decode_workers
    work = Queue(maxsize=tasks * QUEUE_PER_TASK, actor_options={"num_cpus": 0})
    lock = threading.Lock()
    feeder = _Feeder(ctx, stream, work, collector, lock, tasks)
    try:
        for table in _dataset(ctx, work).iter_batches(batch_size=None, batch_format="pyarrow"):
            with lock:
                _handle(collector, table)
                collector.tick()
        feeder.join_and_raise()
        with lock:
            collector.close()
    finally:
        feeder.stop()
        ray.kill(work.actor)
        collector.abandon()


def _dataset(ctx: RunContext, work: Queue) -> ray.data.Dataset:
    settings = ctx.settings
    gpus = ray.cluster_resources().get("GPU", 0) >= 1 and settings.device != "cpu"
    decode_cpu, actor_cpu = cpu_shares(ray.cluster_resources().get("CPU", 1),
                                       settings.decode_workers, settings.encode_actors)
    here = ray.get_runtime_context().get_node_id()
    ds = ray.data.read_datasource(
        WorkQueueDatasource(work, settings.decode_workers, settings, preparer_for(ctx, gpus)),
        override_num_blocks=settings.decode_workers, num_cpus=decode_cpu,
        label_selector={"ray.io/node-id": here})
    return ds.map_batches(
        EncodeActor, fn_constructor_args=(ctx.encoder_args, settings, ctx.model_id, ctx.encoder),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=settings.encode_actors),
        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else actor_cpu)


def preparer_for(ctx: RunContext, gpus: bool) -> Preparer:
    """The recipe the actors' Encoder uses, and the compute dtype it will run in."""
    if ctx.encoder is not None:  # shipped to the actors as is
        return Preparer.for_model(ctx.encoder.options, ctx.encoder.dtype)
    settings = ctx.settings
    device = torch.device("cuda" if gpus else "cpu")
    return Preparer.for_model(PreprocessOptions(video_crops=settings.video_crops),
                              resolve_dtype(settings.dtype, device))


def _handle(collector: Collector, table: pa.Table) -> None:
    segments: list[Segment] = []
    vectors: list[np.ndarray] = []
    later: list[dict[str, Any]] = []
    for row in table.to_pylist():
        if row["encode_s"]:
            collector.report.add_stage_time("encode", row["encode_s"])
        if row["event"] == "segment":
            collector.started(ItemStarted(row["item_id"], row["duration_s"]))
            segments.append(pickle.loads(row["blob"]))
            vectors.append(np.frombuffer(row["vector"], dtype=np.float32))
        else:
            later.append(row)
    if segments:
        collector.encoded(segments, np.stack(vectors))
    for row in later:  # after the segments of this block: counts settle in one pass
        record = pickle.loads(row["blob"])
        if isinstance(record, ItemDecoded):
            collector.decoded(record)
        else:
            collector.rejected(record, modality=row["modality"] or None)


class _Feeder:
    """Planning on a driver thread: decisions go to the collector, work to the Ray queue."""

    def __init__(self, ctx: RunContext, stream: Iterator[PlannedEntry], work: Queue,
                 collector: Collector, lock: threading.Lock, tasks: int) -> None:
        self.ctx, self.stream, self.work = ctx, stream, work
        self.collector, self.lock, self.tasks = collector, lock, tasks
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ray-feeder")
        self._thread.start()

    def _run(self) -> None:
        try:
            feed(self.stream, self._put_work, self._put_event)
        finally:
            for _ in range(self.tasks):
                self._put_queue(None)

    def _put_work(self, planned: PlannedEntry) -> bool:
        item = planned.entry.item
        with self.lock:
            self.collector.begin(item, planned.entry.release)
        return self._put_queue((item, str(planned.entry.path)))

    def _put_event(self, event: Any) -> bool:
        if isinstance(event, Failure):
            self._error = event.error
        elif isinstance(event, FeedDone):
            with self.lock:
                self.ctx.report.add_stage_time("source", event.seconds)
        elif isinstance(event, PlannedEntry) and event.action is not Action.INGEST:
            with self.lock:
                self.collector.planned(event)
        return not self._stop.is_set()

    def _put_queue(self, job: Any) -> bool:
        while not self._stop.is_set():
            try:
                self.work.put(job, timeout=POLL_S)
                return True
            except Full:
                continue
        return False

    def join_and_raise(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
