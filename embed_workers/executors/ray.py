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

import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data import ActorPoolStrategy, DataContext
from ray.util.queue import Full, Queue

from embed_workers.executors import EncoderArgs, RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.feed import Failure, FeedDone, feed, planned_stream
from embed_workers.executors.ray_connect import connect
from embed_workers.executors.ray_tasks import POLL_S, ROW_SCHEMA, WorkQueueDatasource, row_for
from embed_workers.model import resolve_dtype
from embed_workers.pipeline import (
    ItemDecoded,
    ItemStarted,
    encode_prepared,
)
from embed_workers.prepare import Preparer
from embed_workers.preprocess import PreprocessOptions
from ingest.plan import Action, PlannedEntry
from schemas import Segment, Settings

QUEUE_PER_TASK = 2
LOST_ITEM_PASSES = 2  # extra passes over items a dead Ray worker took with it



# --- Ray lifecycle ------------------------------------------------------------------------


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
        out = [{**row_for("segment", s.item_id, s, modality, duration[s.item_id]),
                "vector": v.astype(np.float32).tobytes()} for s, v in zip(kept, vectors, strict=True)]
        out += [row_for("rejected", r.item_id, r, modality, None) for r in rejected]
        out[0]["encode_s"] = spent
        return out


# --- the driver ---------------------------------------------------------------------------


def _run(ctx: RunContext, stream: Iterator[PlannedEntry], collector: Collector) -> None:
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    work, gate = _queues(ctx.settings.decode_workers * QUEUE_PER_TASK)
    lock = threading.Lock()
    feeder = _Feeder(ctx, stream, work, gate, collector, lock)
    try:
        _stream_results(ctx, work, gate, collector, lock)
        feeder.join_and_raise()
        _retry_lost(ctx, collector, lock)
        with lock:
            collector.close()
    finally:
        feeder.stop()
        for queue in (work, gate):
            ray.kill(queue.actor)
        collector.abandon()


def _queues(maxsize: int) -> tuple[Queue, Queue]:
    """The work queue, and the gate the driver closes (one put) after its last job."""
    return (Queue(maxsize=maxsize, actor_options={"num_cpus": 0}),
            Queue(maxsize=1, actor_options={"num_cpus": 0}))


def _stream_results(ctx: RunContext, work: Queue, gate: Queue, collector: Collector,
                    lock: threading.Lock) -> None:
    for table in _dataset(ctx, work, gate).iter_batches(batch_size=None, batch_format="pyarrow"):
        with lock:
            _handle(collector, table)
            collector.tick()


def _retry_lost(ctx: RunContext, collector: Collector, lock: threading.Lock) -> None:
    """Decode again the items a dead worker took with it, then give up on them.

    Ray retries a task whose worker died, but the retry reads the queue afresh:
    jobs the dead attempt had taken never report back. Once the stream has
    ended, every item still unsettled is such a job (or lost an encoded block
    with the worker); it gets ``LOST_ITEM_PASSES`` more tries, then a rejection
    that says the next run retries it. Never a silent gap in the report.
    """
    for _ in range(LOST_ITEM_PASSES):
        lost = [(s.item, s.path) for s in collector.items.values() if s.path is not None]
        if not lost:
            return
        work, gate = _queues(0)
        try:
            with lock:
                for item, path in lost:
                    collector.restart(item.item_id)
                    work.put((item, path))
            gate.put(True)
            _stream_results(ctx, work, gate, collector, lock)
        finally:
            for queue in (work, gate):
                ray.kill(queue.actor)
    with lock:
        for item_id in list(collector.items):
            collector.lost(item_id, f"lost with failed Ray workers {LOST_ITEM_PASSES + 1} times; "
                           "the next run retries it")


def _dataset(ctx: RunContext, work: Queue, gate: Queue) -> ray.data.Dataset:
    settings = ctx.settings
    gpus = ray.cluster_resources().get("GPU", 0) >= 1 and settings.device != "cpu"
    decode_cpu, actor_cpu = cpu_shares(ray.cluster_resources().get("CPU", 1),
                                       settings.decode_workers, settings.encode_actors)
    here = ray.get_runtime_context().get_node_id()
    ds = ray.data.read_datasource(
        WorkQueueDatasource(work, gate, settings.decode_workers, settings, preparer_for(ctx, gpus)),
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
                 gate: Queue, collector: Collector, lock: threading.Lock) -> None:
        self.ctx, self.stream, self.work, self.gate = ctx, stream, work, gate
        self.collector, self.lock = collector, lock
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ray-feeder")
        self._thread.start()

    def _run(self) -> None:
        try:
            feed(self.stream, self._put_work, self._put_event)
        finally:
            self.gate.put(True)  # after the last job: decode tasks end once the queue drains

    def _put_work(self, planned: PlannedEntry) -> bool:
        item = planned.entry.item
        path = str(planned.entry.path)
        with self.lock:
            self.collector.begin(item, planned.entry.release, path)
        return self._put_queue((item, path))

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
