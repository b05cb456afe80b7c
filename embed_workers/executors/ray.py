"""The Ray executor: Ray Data streaming; shards read and decoded on any node, encoded in a
pool, committed by one actor.

    driver: plan (list the source, anti-join the ledger, cut shards: no content read)
        ─► a pool of decode actors, spread over the nodes, each shard to one with room
           (CPU; an actor that died is restarted, on a live node if its own is gone,
           and its calls are retried, each reading its shards anew;
           ``ray_tasks.DecodeActor``): read each shard's members
           straight from the source, hash, probe, decode, pack (``ray_tasks``);
           blocks of packed inputs per modality, every row keyed by its entry and its
           reading
        ─► map_batches(EncodeActor, compute=ActorPoolStrategy(min_size=fit, max_size=N))
           (model built once per actor; spread over the nodes; the pool starts with the
           actors the cluster holds, ``pool_start``, grows with the cluster and runs on
           what exists; it finishes the packs on its device and runs the model), which stages
           each output block (``embed_workers.staging``) before returning it
        ─► the committer actor (``ray_commit``): admission (one copy per item, one
           reading per shard, ``ray_admit``), the collector, the store it holds

The driver hands the committer references to the encoded blocks and gets counts
back: media bytes and vectors never pass through it. A run first commits what an
earlier run staged and never committed (``ray_replay``: a driver that died),
then plans; it removes its source's staged parts once everything is committed.
A rerun whose plan leaves nothing to read and nothing staged settles on the
driver (counts and ledger entries, no points) without starting Ray.

Decode actors hand packed inputs (``prepare``: uint8 frames, waveforms); the
actors finish them on their own device. Ray Data's streaming backpressure and the
committer's few blocks in flight keep memory and spooled disk flat.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext

from embed_workers.encoder import view_budgets
from embed_workers.executors import EncoderArgs, RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.feed import make_plan
from embed_workers.executors.ray_commit import (
    CommittedLedger,
    CommitterHandle,
    committing,
    result,
)
from embed_workers.executors.ray_connect import connect
from embed_workers.executors.ray_tasks import (
    ROW_SCHEMA,
    DecodeActor,
    DecodeJob,
    row_for,
    shard_rows,
    start_gate,
)
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
from schemas.extension import Shipment
from schemas.payload import collection_name

log = logging.getLogger(__name__)

# What is retried: failures of the cluster (an actor, a worker, a node, an object lost
# with them), never of the inputs or of a device.
CLUSTER_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                    ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError)
LOST_ITEM_PASSES = 2  # extra passes over items a dead Ray worker took with it
DECODE_IN_FLIGHT = 2  # shards queued per decode actor: one being read, one waiting


# --- Ray lifecycle ------------------------------------------------------------------------


def cpu_shares(total_cpus: float, decoders: int, actors: int,
               gpus: bool = False) -> tuple[float, float]:
    """CPUs per decode actor and per encode actor, fractional when the cluster is small; a
    GPU encode actor always asks for one CPU, and the decoders share what is left."""
    if decoders + actors + 1 <= total_cpus:
        return 1.0, 1.0
    if gpus:
        return max((total_cpus - actors - 1) / decoders, 0.05), 1.0
    share = max(total_cpus / (decoders + actors + 1), 0.05)
    return share, share


def run_ray(ctx: RunContext) -> None:
    staging = staging_of(ctx)
    ray_up = _Connection(ctx.settings)
    try:
        staged = staging.parts()
        plan = None if staged else _plan(ctx, ray_up)
        if plan is not None and not plan.shards:
            _settle_here(ctx, plan)  # nothing to read or commit: no points, no Ray start
        else:
            ray_up.ensure()
            with committing(ctx) as committer:
                if staged:  # an earlier run's encoded work first: the plan then skips it
                    committer.call("replay", staging)
                    plan = _plan(ctx, ray_up, CommittedLedger(committer))
                committer.planned(_settled_by_plan(plan))
                if plan.shards:
                    _run(ctx, plan, committer, _actors_stage(ctx, staging))
                committer.close()
        staging.clear()  # everything staged is committed now
    finally:
        ray_up.close()


def _plan(ctx: RunContext, ray_up: _Connection, ledger: Any = None) -> ShardPlan:
    """The plan, made on the driver (listing in a task for a URL; no content read)."""
    started = time.perf_counter()
    if ledger is not None and ctx.ledger is not None:
        ctx = dataclasses.replace(ctx, ledger=ledger)
    plan = make_plan(ctx, listed_in_task(ctx, ray_up) if is_url(ctx.source) else None,
                     index_with=lambda source, _: indexed_in_task(ctx, source, ray_up))
    ctx.report.add_stage_time("source", time.perf_counter() - started)
    return plan


def _settled_by_plan(plan: ShardPlan) -> list[PlannedEntry]:
    """What the plan settled without reading: unchanged objects, archives unchanged whole."""
    return ([PlannedEntry(Action.UNCHANGED, unchanged=Unchanged(e)) for e in plan.unchanged]
            + [PlannedEntry(Action.CONTAINER, container=end)
               for end in settled_archive_end(plan)])


def _settle_here(ctx: RunContext, plan: ShardPlan) -> None:
    """A plan with nothing to read: its counts, and the ledger entries of archives now
    settled as a whole, recorded by the driver (it writes no point)."""
    collector = Collector(ctx)
    for entry in _settled_by_plan(plan):
        collector.planned(entry)
    collector.close()


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
    whole_source = result(next(chunks))
    return SourceListing(whole_source, (m for ref in chunks for m in result(ref)))


def indexed_in_task(ctx: RunContext, source: str, ray_up: _Connection) -> Any:
    """The source archive's member index, built by a task on a worker node (it reads the
    archive's headers or directory; the driver reads none of it)."""
    ray_up.ensure()
    task = ray.remote(index_archive).options(scheduling_strategy="SPREAD")
    return result(task.remote(source, ctx.settings))


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
    # absolute: the actors and the committer may run in another folder
    root = ctx.settings.staging_url or str((ctx.settings.home / "staging").expanduser().resolve())
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

    Rows arrive packed (``Prepared``): the actor finishes them on its device
    (``Encoder.finish_batch``) and runs the model, and sends back each segment's metadata with its vector.

    An encoder handed to ``run_ingest`` is shipped to the actors as is (fine for
    small models; for large ones leave it to the actors to load their own).
    """

    def __init__(self, args: EncoderArgs, settings: Settings, model_id: str,
                 encoder: Any = None, staging: Staging | None = None) -> None:
        if encoder is None:
            args.extensions.unpack(settings.home)  # this node's HOME gets the run's extensions
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
        if self.staging is not None:  # durable before the committer sees it (``staging``)
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


def _run(ctx: RunContext, plan: ShardPlan, committer: CommitterHandle,
         staging: Staging | None) -> None:
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # An encode call fails when its actor or node does (bad inputs are rejected inside
    # it): retried on an actor that is still there. An EncoderFault (the actor's device
    # keeps failing) is not retried: it stops the run with its own message. A decode call
    # whose actor or node died is retried the same way: it reads its shards anew.
    context.actor_task_retry_on_errors = list(CLUSTER_FAILURES)
    context.raise_original_map_exception = True  # an EncoderFault reaches the run as itself
    job = ray.put(decode_job(ctx, _use_gpus(ctx.settings)))
    _stream_results(ctx, plan.shards, job, staging, committer)
    _retry_lost(ctx, plan, job, staging, committer)


def _stream_results(ctx: RunContext, shards: list[Shard], job: ray.ObjectRef,
                    staging: Staging | None, committer: CommitterHandle) -> None:
    """Read, decode and encode the shards; every output block goes to the committer by
    reference (the driver never fetches one)."""
    dataset = _dataset(ctx, shards, job, staging)
    try:
        for bundle in dataset.iter_internal_ref_bundles():
            committer.hand_on(bundle)
        committer.wait()
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, EncoderFault):  # said in its own words, not a traceback
            raise exc.cause from None
        raise


def _retry_lost(ctx: RunContext, plan: ShardPlan, job: ray.ObjectRef,
                staging: Staging | None, committer: CommitterHandle) -> None:
    """Read again the shards a failure left unfinished, then give up on their items.

    Ray retries a decode call whose actor died, and the committer takes the new
    reading in place of the old one; an encoded block lost with a node, or a
    reading replaced after some of its entries were dropped, still leaves a
    shard unfinished. Once the stream has ended, every shard not read to its end,
    or holding an item not settled, gets ``LOST_ITEM_PASSES`` more readings; then
    its items get a rejection that says the next run retries them. Never a silent
    gap in the report.
    """
    by_id = {s.shard_id: s for s in plan.shards}
    for _ in range(LOST_ITEM_PASSES):
        lost = committer.call("unfinished", list(by_id))
        if not lost:
            return
        committer.call("read_again", lost)
        _stream_results(ctx, [by_id[i] for i in sorted(lost)], job, staging, committer)
    committer.call("give_up", f"lost with failed Ray workers {LOST_ITEM_PASSES + 1} times; "
                              "the next run retries it")


def _use_gpus(settings: Settings) -> bool:
    return ray.cluster_resources().get("GPU", 0) >= 1 and settings.device != "cpu"


def _dataset(ctx: RunContext, shards: list[Shard], job: ray.ObjectRef,
             staging: Staging | None) -> ray.data.Dataset:
    settings = ctx.settings
    gpus = _use_gpus(settings)
    # The shards go to a pool of decode actors (``ray_tasks.DecodeActor``), spread over the
    # nodes so that decode and the source's bandwidth grow with the cluster, each shard to
    # an actor with room for it; then to the encode actors.
    rows = shard_rows(shards)
    decoders = min(settings.decode_workers, len(rows))
    decode_cpu, actor_cpu = cpu_shares(ray.cluster_resources().get("CPU", 1), decoders,
                                       settings.encode_actors, gpus)
    # The encode pool starts with the actors that fit the cluster as it is (a run on a
    # cluster smaller than encode_actors, say after a node was lost, starts instead of
    # waiting for actors that cannot be placed) and grows to encode_actors as resources
    # appear. It is also its minimum: from a minimum of one, Ray Data's autoscaler keeps a
    # single actor whenever encoding is quicker than decoding (a small model on CPUs), and
    # the other nodes' encoders sit idle (benchmarks/scale.py).
    start = pool_start(settings.encode_actors, gpus)
    nodes = _cpu_nodes()
    on_one_node = min(start, max((n.get("GPU", 0) for n in nodes), default=0)) if gpus else start
    decode_cpu, actor_cpu = fit_one_node(decode_cpu, decoders, actor_cpu, on_one_node, gpus,
                                         min((n["CPU"] for n in nodes), default=1.0))
    # Every decode actor waits at the gate until the whole pool is up (bounded), so the
    # first shards are shared among the nodes (``ray_tasks.StartGate``).
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        DecodeActor, fn_constructor_args=(job, start_gate(decoders)), batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=decoders, max_tasks_in_flight_per_actor=DECODE_IN_FLIGHT),
        num_cpus=decode_cpu, ray_remote_args_fn=_spread)
    return ds.map_batches(
        EncodeActor, fn_constructor_args=(ctx.encoder_args, settings, ctx.model_id, ctx.encoder, staging),
        batch_size=None, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=start, max_size=settings.encode_actors),
        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else actor_cpu,
        ray_remote_args_fn=_spread)


def _spread() -> dict[str, Any]:
    return {"scheduling_strategy": "SPREAD"}


def pool_start(actors: int, gpus: bool) -> int:
    """How many encode actors the pool starts with: ``actors``, or as many as the live
    cluster holds (one per GPU; on CPUs one per node with a CPU), at least one.

    Ray notices a dead node some seconds after it died, so this may count one that is
    gone: both pools ask for little enough CPU that all of them fit on one node
    (``fit_one_node``), and Ray places an actor meant for the dead node on a
    live one once it notices."""
    fit = int(ray.cluster_resources().get("GPU", 0)) if gpus else len(_cpu_nodes())
    return max(1, min(actors, fit))


def fit_one_node(decode_cpu: float, decoders: int, actor_cpu: float, actors: int,
                 gpus: bool, smallest: float) -> tuple[float, float]:
    """The CPUs each decode actor and each CPU encode actor ask for, scaled down (never up)
    until all the decoders and ``actors`` encode actors fit on the smallest node, of
    ``smallest`` CPUs. A GPU encode actor keeps its one CPU (``actors`` is then the most
    that one node's GPUs hold), and the decoders fit beside them.

    Ray notices a dead node some seconds after it died, so a run may start with pools
    sized for a node that is gone, and Ray places their actors as they fit. Were the
    decode actors to fill the one node left, no encode actor could start beside them (or
    the other way round), and the run would wait forever; the asks only place actors, they
    do not limit how much CPU each uses."""
    room = max(smallest - (actors * 1.0 if gpus else 0.0), 0.05)
    asked = decoders * decode_cpu + (0.0 if gpus else actors * actor_cpu)
    scale = min(1.0, room / asked)
    return max(decode_cpu * scale, 0.001), actor_cpu if gpus else max(actor_cpu * scale, 0.001)


def _cpu_nodes() -> list[dict[str, float]]:
    """The resources of each live node that has a CPU."""
    return [n["Resources"] for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]


def decode_job(ctx: RunContext, gpus: bool) -> DecodeJob:
    """What every decode actor gets: settings, the preparer, the sidecar manifest's rows."""
    rows = load_manifest(ctx.manifest) if ctx.manifest is not None else {}
    budgets = (ctx.encoder.batch_sizes if ctx.encoder is not None
               else view_budgets("cuda" if gpus else "cpu"))
    return DecodeJob(ctx.settings, preparer_for(ctx), rows, ctx.ledger is not None,
                     {Modality(m).value: n for m, n in budgets.items()},
                     Shipment.of(ctx.settings.home))


def preparer_for(ctx: RunContext) -> Preparer:
    """The recipe options the actors' Encoder uses."""
    if ctx.encoder is not None:  # shipped to the actors as is
        return Preparer(ctx.encoder.options)
    return Preparer(PreprocessOptions(video_crops=ctx.settings.video_crops))
