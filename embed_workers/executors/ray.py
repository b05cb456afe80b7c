"""The Ray executor: Ray Data streaming; shards read and decoded on any node, encoded in a pool.

    driver: plan (list the source, anti-join the ledger, cut shards: no content read)
        ─► work queue of shards (Ray actor, bounded; plain data, no bytes)
        ─► read tasks on any node (CPU): read each shard's members straight from the
           source, hash, probe, decode, preprocess (``ray_tasks``); blocks of model
           tensors per modality, every row keyed by its entry
        ─► map_batches(EncodeActor, compute=ActorPoolStrategy(min_size=1, max_size=N))
           (model built once per actor; the pool grows with the cluster and runs on
           what exists; it only stacks the tensors and runs the model), which stages
           each output block (``embed_workers.staging``) before returning it
        ─► driver: admission (one copy per item, ``ray_admit``), the collector, the sink

A run first commits what an earlier run staged and never committed
(``ray_replay``: a driver that died), then plans; it removes its source's
staged parts once everything is committed.

The driver lists the source and never reads its content; the read tasks are
not pinned to any node. Vision tensors cross the object store as float16 when
the model computes in bf16/fp16 (``prepare.wire_dtypes``); the actors send
back vectors and segment metadata only, and the driver writes them through
the sink (the embedded store's one holder). Bounded queues and Ray Data's
streaming backpressure keep memory and spooled disk flat.
"""

from __future__ import annotations

import logging
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
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from embed_workers.encoder import view_budgets
from embed_workers.executors import EncoderArgs, RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.feed import make_plan
from embed_workers.executors.ray_admit import Admission
from embed_workers.executors.ray_connect import connect
from embed_workers.executors.ray_replay import replay_staged
from embed_workers.executors.ray_tasks import (
    POLL_S,
    ROW_SCHEMA,
    DecodeJob,
    WorkQueueDatasource,
    row_for,
)
from embed_workers.model import resolve_dtype
from embed_workers.pipeline import EncoderFault, encode_prepared
from embed_workers.prepare import Preparer
from embed_workers.preprocess import PreprocessOptions
from embed_workers.staging import Staging
from ingest.manifest import load_manifest
from ingest.plan import Action, PlannedEntry
from ingest.shards import ListedMember, Shard, ShardPlan
from ingest.sources import (
    SourceListing,
    Unchanged,
    index_archive,
    list_source,
    settled_archive_end,
)
from schemas import Modality, Settings
from schemas.payload import collection_name

log = logging.getLogger(__name__)

# What is retried: failures of the cluster (an actor, a worker, a node, an object lost
# with them), never of the inputs or of a device.
CLUSTER_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                    ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError)
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
    staging = staging_of(ctx)
    replay_staged(ctx, collector, staging)  # an earlier run's encoded work, before the plan
    ray_up = _Connection(ctx.settings)
    try:
        started = time.perf_counter()
        plan = make_plan(ctx, listed_in_task(ctx, ray_up) if is_url(ctx.source) else None,
                         index_with=lambda source, _: indexed_in_task(ctx, source, ray_up))
        for entry in plan.unchanged:
            collector.planned(PlannedEntry(Action.UNCHANGED, unchanged=Unchanged(entry)))
        for end in settled_archive_end(plan):
            collector.planned(PlannedEntry(Action.CONTAINER, container=end))
        collector.report.add_stage_time("source", time.perf_counter() - started)
        if plan.shards:
            ray_up.ensure()
            _run(ctx, plan, collector, _actors_stage(ctx, staging))
        else:
            collector.close()
        staging.clear()  # everything staged is committed now
    finally:
        ray_up.close()


class _Connection:
    """Ray, joined or started only once a step needs it: a folder whose plan leaves nothing
    to do is listed and settled without Ray's start-up. A URL is listed, and a source
    archive indexed, in a task on a node that holds the source's credentials (the driver
    may have none)."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.started = settings, False

    def ensure(self) -> None:
        self.started = connect(self.settings) or self.started

    def close(self) -> None:
        if self.started:
            ray.shutdown()


def is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


LISTING_CHUNK = 10_000  # listed objects per message from the listing task


def listed_in_task(ctx: RunContext, ray_up: _Connection) -> SourceListing:
    """The source listed by a Ray task on a worker node, streamed back in chunks (names,
    sizes, versions: no content), so the driver needs no access to the source."""
    ray_up.ensure()
    task = ray.remote(_list_chunks).options(num_returns="streaming",
                                            scheduling_strategy="SPREAD")
    chunks = task.remote(ctx.source, ctx.settings)
    whole_source = _result(next(chunks))
    return SourceListing(whole_source, (m for ref in chunks for m in _result(ref)))


def _result(ref: ray.ObjectRef) -> Any:
    """A task's result, or the error it raised as itself (a missing source is the user's
    error, said in one line, not a Ray traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise


def indexed_in_task(ctx: RunContext, source: str, ray_up: _Connection) -> Any:
    """The source archive's member index, built by a task on a worker node (it reads the
    archive's headers or directory; the driver reads none of it)."""
    ray_up.ensure()
    task = ray.remote(index_archive).options(scheduling_strategy="SPREAD")
    return _result(task.remote(source, ctx.settings))


def _list_chunks(source: str, settings: Settings) -> Iterator[Any]:
    listing = list_source(source, settings)
    yield listing.whole_source
    chunk: list[ListedMember] = []
    for member in listing.members:
        chunk.append(member)
        if len(chunk) >= LISTING_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def staging_of(ctx: RunContext) -> Staging:
    """This source's staging folder in this run's collection (``embed_workers.staging``)."""
    root = ctx.settings.staging_url or str(ctx.settings.home / "staging")
    return Staging.at(root, collection_name(ctx.model_id, ctx.settings.policy), ctx.source)


def _actors_stage(ctx: RunContext, staging: Staging) -> Staging | None:
    """Where the actors stage: the configured URL, or HOME when the cluster is this machine
    (a worker's local disk would be out of the driver's reach)."""
    if ctx.settings.staging_url or _one_machine():
        return staging
    ctx.report.notes.append("encoded output is not staged (set MEDIABIND_STAGING_URL to a "
                            "URL every node reaches): if the driver dies, its uncommitted "
                            "work is encoded again")
    return None


def _one_machine() -> bool:
    here = ray.util.get_node_ip_address()
    return all(n["NodeManagerAddress"] == here for n in ray.nodes() if n["Alive"])


# --- encode actors ------------------------------------------------------------------------


class EncodeActor:
    """Builds the Encoder once per actor; encodes prepared rows per modality, passes markers.

    Rows arrive preprocessed (``Prepared``): the actor stacks and runs the
    model, and sends back each segment's metadata with its vector.

    An encoder handed to ``run_ingest`` is shipped to the actors as is (fine for
    small models; for large ones leave it to the actors to load their own).
    """

    def __init__(self, args: EncoderArgs, settings: Settings, model_id: str,
                 encoder: Any = None, staging: Staging | None = None) -> None:
        self.encoder = encoder if encoder is not None else args.build(settings)
        if self.encoder.model_id != model_id:
            raise RuntimeError(f"actor built {self.encoder.model_id!r}, the run uses {model_id!r}")
        self.node = ray.get_runtime_context().get_node_id()
        self.staging = staging

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        out = [r for r in rows if r["event"] != "segment"]
        by_modality: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["event"] == "segment":
                by_modality.setdefault(r["modality"], []).append(r)
        for modality, group in by_modality.items():
            out += self._encode(modality, group)
        result = pa.Table.from_pylist(out, schema=ROW_SCHEMA)
        if self.staging is not None:  # durable before the driver sees it (``staging``)
            self._stage(result)
        return result

    def _stage(self, result: pa.Table) -> None:
        """A failed write costs the crash-safety of this block, never the block itself."""
        try:
            self.staging.write(result)
        except OSError as exc:
            log.warning("could not stage an encoded block under %s (%s); it is committed "
                        "by this run, but would be encoded again after a driver crash",
                        self.staging.url, exc)

    def _encode(self, modality: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prepared = [pickle.loads(r["blob"]) for r in rows]
        row_of = {id(p.segment): r for p, r in zip(prepared, rows, strict=True)}
        started = time.perf_counter()
        kept, vectors, rejected = encode_prepared(self.encoder, prepared)
        spent = time.perf_counter() - started
        out = [self._segment_row(row_of[id(s)], s, v, modality)
               for s, v in zip(kept, vectors, strict=True)]
        unkept = [r for p, r in zip(prepared, rows, strict=True)
                  if not any(p.segment is s for s in kept)]
        for rejection in rejected:  # in input order: the first unkept row of its item
            row = next(r for r in unkept if r["item_id"] == rejection.item_id)
            unkept.remove(row)
            out.append(row_for("rejected", rejection.item_id, rejection, modality, None)
                       | _origin(row))
        out[0]["encode_s"] = spent
        return out

    def _segment_row(self, row: dict[str, Any], segment: Any, vector: np.ndarray,
                     modality: str) -> dict[str, Any]:
        return (row_for("segment", segment.item_id, segment, modality, row["duration_s"])
                | _origin(row) | {"encoder_node": self.node,
                                  "vector": vector.astype(np.float32).tobytes()})


def _origin(row: dict[str, Any]) -> dict[str, Any]:
    """What an output row keeps of its input row: which entry, which reading, which node."""
    return {"key": row["key"], "attempt": row["attempt"], "node": row["node"]}


# --- the driver ---------------------------------------------------------------------------


def _run(ctx: RunContext, plan: ShardPlan, collector: Collector,
         staging: Staging | None) -> None:
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # An encode call fails when its actor or node does (bad inputs are rejected inside
    # it): retried on an actor that is still there. An EncoderFault (the actor's device
    # keeps failing) is not retried: it stops the run with its own message.
    context.actor_task_retry_on_errors = list(CLUSTER_FAILURES)
    context.raise_original_map_exception = True  # an EncoderFault reaches the run as itself
    job = decode_job(ctx, _use_gpus(ctx.settings))
    work, gate = _queues(ctx.settings.decode_workers * QUEUE_PER_TASK)
    lock = threading.Lock()
    admission = Admission(ctx, collector)
    feeder = _ShardFeeder(plan.shards, work, gate)
    try:
        _stream_results(ctx, work, gate, job, staging, admission, lock)
        feeder.join_and_raise()
        _retry_lost(ctx, plan, job, staging, admission, lock)
        with lock:
            collector.report.decode_nodes = dict(admission.decode_nodes)
            collector.report.encode_nodes = dict(admission.encode_nodes)
            collector.close()
    finally:
        feeder.stop()
        for queue in (work, gate):
            ray.kill(queue.actor)
        collector.abandon()


def _queues(maxsize: int) -> tuple[Queue, Queue]:
    """The work queue, and the gate the driver closes (one put) after its last job.

    Both live on the driver's node: a worker node may die, and the queues with it.
    """
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    options = {"num_cpus": 0, "scheduling_strategy": here}
    return Queue(maxsize=maxsize, actor_options=options), Queue(maxsize=1, actor_options=options)


def _stream_results(ctx: RunContext, work: Queue, gate: Queue, job: DecodeJob,
                    staging: Staging | None, admission: Admission,
                    lock: threading.Lock) -> None:
    dataset = _dataset(ctx, work, gate, job, staging)
    try:
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            with lock:
                admission.handle(table)
                admission.collector.tick()
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, EncoderFault):  # said in its own words, not a traceback
            raise exc.cause from None
        raise


def _retry_lost(ctx: RunContext, plan: ShardPlan, job: DecodeJob, staging: Staging | None,
                admission: Admission, lock: threading.Lock) -> None:
    """Read again the shards a dead worker took with it, then give up on their items.

    Ray retries a task whose worker died, but the retry reads the queue afresh:
    shards the dead attempt had taken never report back. Once the stream has
    ended, every shard not read to its end, or holding an item not settled, is
    such a shard (or lost an encoded block with a worker); it gets
    ``LOST_ITEM_PASSES`` more tries, then its items get a rejection that says
    the next run retries them. Never a silent gap in the report.
    """
    by_id = {s.shard_id: s for s in plan.shards}
    for _ in range(LOST_ITEM_PASSES):
        lost = {i for i in by_id if i not in admission.shards_read}
        lost |= admission.unsettled_shards()
        if not lost:
            return
        work, gate = _queues(0)
        try:
            with lock:
                admission.forget_unsettled(lost)
                admission.shards_read -= lost
                for shard_id in sorted(lost):
                    work.put(by_id[shard_id])
            gate.put(True)
            _stream_results(ctx, work, gate, job, staging, admission, lock)
        finally:
            for queue in (work, gate):
                ray.kill(queue.actor)
    with lock:
        for item_id in list(admission.collector.items):
            admission.collector.lost(item_id, f"lost with failed Ray workers "
                                     f"{LOST_ITEM_PASSES + 1} times; the next run retries it")


def _use_gpus(settings: Settings) -> bool:
    return ray.cluster_resources().get("GPU", 0) >= 1 and settings.device != "cpu"


def _dataset(ctx: RunContext, work: Queue, gate: Queue, job: DecodeJob,
             staging: Staging | None) -> ray.data.Dataset:
    settings = ctx.settings
    gpus = _use_gpus(settings)
    decode_cpu, actor_cpu = cpu_shares(ray.cluster_resources().get("CPU", 1),
                                       settings.decode_workers, settings.encode_actors)
    # SPREAD: read tasks go to different nodes where they can, so decode and the
    # source's bandwidth grow with the cluster instead of filling one node first. The
    # pool says DEFAULT: with args it could merge, Ray Data would fuse the reads into
    # the encode actors, and decode would run only where they do. (Ray 2.60 warns that
    # such free remote args go in 2.64; it names no replacement for the strategy yet.)
    ds = ray.data.read_datasource(
        WorkQueueDatasource(work, gate, settings.decode_workers, job),
        override_num_blocks=settings.decode_workers, num_cpus=decode_cpu,
        scheduling_strategy="SPREAD")
    # min 1: a run starts on a cluster smaller than encode_actors (say, after a node
    # was lost) instead of waiting for actors that cannot be placed; max: the pool
    # grows to encode_actors as resources appear.
    return ds.map_batches(
        EncodeActor, fn_constructor_args=(ctx.encoder_args, settings, ctx.model_id, ctx.encoder, staging),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=settings.encode_actors),
        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else actor_cpu,
        scheduling_strategy="DEFAULT")


def decode_job(ctx: RunContext, gpus: bool) -> DecodeJob:
    """What every read task gets: settings, the preparer, the sidecar manifest's rows."""
    rows = load_manifest(ctx.manifest) if ctx.manifest is not None else {}
    budgets = (ctx.encoder.batch_sizes if ctx.encoder is not None
               else view_budgets("cuda" if gpus else "cpu"))
    return DecodeJob(ctx.settings, preparer_for(ctx, gpus), rows, ctx.ledger is not None,
                     {Modality(m).value: n for m, n in budgets.items()})


def preparer_for(ctx: RunContext, gpus: bool) -> Preparer:
    """The recipe the actors' Encoder uses, and the compute dtype it will run in."""
    if ctx.encoder is not None:  # shipped to the actors as is
        return Preparer.for_model(ctx.encoder.options, ctx.encoder.dtype)
    settings = ctx.settings
    device = torch.device("cuda" if gpus else "cpu")
    return Preparer.for_model(PreprocessOptions(video_crops=settings.video_crops),
                              resolve_dtype(settings.dtype, device))


class _ShardFeeder:
    """Puts the plan's shards into the Ray queue on a driver thread, then closes the gate."""

    def __init__(self, shards: list[Shard], work: Queue, gate: Queue) -> None:
        self.shards, self.work, self.gate = shards, work, gate
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ray-feeder")
        self._thread.start()

    def _run(self) -> None:
        try:
            for shard in self.shards:
                if not self._put(shard):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised by join_and_raise
            self._error = exc
        finally:
            self.gate.put(True)  # after the last job: read tasks end once the queue drains

    def _put(self, shard: Shard) -> bool:
        while not self._stop.is_set():
            try:
                self.work.put(shard, timeout=POLL_S)
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
