"""The committer: the one process that writes a Ray run's points (DESIGN.md §5).

Encoded blocks go from the encode actors to this actor; the driver hands on
references to them and gets counts back, never a vector. The committer holds
the store for the run, lent by the driver (``PointSink.lend``): an embedded
engine admits one process, and that process is this actor, never the driver;
a server store is opened here beside the driver's handle. Here the admission
(``ray_admit``: one copy per item, one reading per shard) and the collector
(``collect``) run: items settle, their points are upserted segments first,
and their ledger entries follow the upserts that hold their points. An
earlier run's staged output is replayed here too (``ray_replay``).

The actor lives on the driver's node (an embedded store is on that node's
disk) and is never restarted: if it dies, the run fails, and what the
encode actors staged is committed by the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from embed_workers.executors import LockedSink, RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.ray_admit import Admission
from embed_workers.executors.ray_replay import replay_staged
from embed_workers.report import ProgressMeter, RunReport
from embed_workers.staging import Staging
from ingest.plan import PlannedEntry
from schemas.ledger import LedgerEntry
from schemas.sink import HOLDER_ENV, pid_space

IN_FLIGHT = 4  # blocks handed to the committer and not yet committed, per driver
RELEASE_WAIT_S = 60.0
PLANNED_CHUNK = 10_000  # planned entries per call
FOLLOW_POLL_S = 0.2


class Committer:
    """Admission, collector and sink of one Ray run, in their own process."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.sink = ctx, None

    def open(self, opener: Any, with_ledger: bool, driver: tuple[int, str]) -> None:
        """Open the lent store here (a method, not the constructor: its errors, such as a
        store still locked, reach the driver as themselves). ``driver``: its pid and
        ``pid_space()``; where that pid names the driver, the committer ends with it, at
        once."""
        pid, space = driver
        os.environ[HOLDER_ENV] = f"mediabind committer of driver pid {pid} on {space}"
        if space == pid_space():
            threading.Thread(target=_follow, args=(pid,), daemon=True,
                             name="follow-driver").start()
        sink = opener()
        self.sink = sink
        ledger = sink.ledger() if with_ledger else None
        self.ctx = dataclasses.replace(self.ctx, sink=LockedSink(sink), ledger=ledger)
        self.collector = Collector(self.ctx)
        self.admission = Admission(self.ctx, self.collector)

    def replay(self, staging: Staging) -> None:
        replay_staged(self.ctx, self.collector, staging)

    def lookup(self, uris: Sequence[str]) -> dict[str, LedgerEntry]:
        return self.ctx.ledger.lookup(uris) if self.ctx.ledger is not None else {}

    def planned(self, entries: Sequence[PlannedEntry]) -> None:
        for entry in entries:
            self.collector.planned(entry)

    def handle(self, table: pa.Table, start: int = 0, end: int | None = None) -> tuple[int, int]:
        """Commit what one encoded block settles; the run's counts so far."""
        if start or end is not None:
            table = table.slice(start, (end if end is not None else len(table)) - start)
        self.admission.handle(table)
        report = self.ctx.report
        return report.items_seen, report.segments_total

    def unfinished(self, shard_ids: Sequence[str]) -> set[str]:
        """Shards to read again: not read to their end, or holding an unsettled item."""
        return ({s for s in shard_ids if s not in self.admission.shards_read}
                | self.admission.unsettled_shards())

    def read_again(self, shard_ids: set[str]) -> None:
        self.admission.retire(shard_ids)

    def give_up(self, reason: str) -> None:
        for item_id in list(self.collector.items):
            self.collector.lost(item_id, reason)

    def close(self) -> RunReport:
        """Settle everything, close the store; what this process recorded of the run."""
        self.give_up("not settled when the run ended; the next run retries it")  # none, normally
        self._count_nodes()
        try:
            self.collector.close()
        finally:
            self.sink.close()
        return self.ctx.report

    def abandon(self) -> RunReport:
        """The run is stopping: let go of the store without settling anything more (and
        without building its index: the driver is waiting for it); what was recorded."""
        if self.sink is not None:
            self._count_nodes()
            self.collector.abandon()
            self.sink.close(optimize=False)
        return self.ctx.report

    def _count_nodes(self) -> None:
        self.ctx.report.decode_nodes = dict(self.admission.decode_nodes)
        self.ctx.report.encode_nodes = dict(self.admission.encode_nodes)


def _follow(pid: int) -> None:
    """End this process once the driver is gone: an embedded store's lock goes with it, so
    the rerun gets the store at once (Ray would end the actor too, but later)."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            return
        time.sleep(FOLLOW_POLL_S)


class CommitterHandle:
    """The driver's side: hands blocks on, keeps a few in flight, ticks the progress."""

    def __init__(self, actor: Any, ctx: RunContext) -> None:
        self.actor, self.ctx = actor, ctx
        self.pending: deque[ray.ObjectRef] = deque()
        self.closed = False

    def call(self, method: str, *args: Any) -> Any:
        self.wait()
        return result(getattr(self.actor, method).remote(*args))

    def planned(self, entries: Sequence[PlannedEntry]) -> None:
        for i in range(0, len(entries), PLANNED_CHUNK):
            self.call("planned", list(entries[i:i + PLANNED_CHUNK]))

    def hand_on(self, bundle: Any) -> None:
        """One bundle of Ray Data's output: its blocks go to the committer by reference."""
        for entry, piece in zip(bundle.blocks, bundle.slices, strict=True):
            span = (piece.start_offset, piece.end_offset) if piece is not None else ()
            self.pending.append(self.actor.handle.remote(entry.ref, *span))
            while len(self.pending) > IN_FLIGHT:
                self._tick(result(self.pending.popleft()))

    def wait(self) -> None:
        while self.pending:
            self._tick(result(self.pending.popleft()))

    def _tick(self, counts: tuple[int, int]) -> None:
        self.ctx.meter.tick_counts(*counts)

    def close(self) -> None:
        """Settle and commit the rest; the run's report gets what the committer recorded."""
        self.ctx.report.absorb(self.call("close"))
        self.closed = True
        report = self.ctx.report
        self.ctx.meter.tick(report, final=True)

    def release(self) -> None:
        """The committer lets go of the store (settling nothing more if not closed) and
        ends, so the driver may open the store again; a run that failed still reports
        what the committer had stored."""
        self.pending.clear()
        if not self.closed:
            # A dead committer's store went with its process, and its counts with it.
            with contextlib.suppress(Exception):
                self.ctx.report.absorb(ray.get(self.actor.abandon.remote(),
                                               timeout=RELEASE_WAIT_S))
        ray.kill(self.actor)


@contextmanager
def committing(ctx: RunContext) -> Iterator[CommitterHandle]:
    """A committer for this run, holding the store the driver lends it until the end."""
    sink = getattr(ctx.sink, "inner", ctx.sink)  # ``LockedSink``
    lend = getattr(sink, "lend", None)
    if lend is None:
        raise TypeError(f"the ray executor commits in a Ray actor, and {type(sink).__name__} "
                        "cannot be lent to one: give it a lend() (VectorStore has one), or "
                        "use the local executor")
    with lend() as opener:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                              soft=False)
        actor = ray.remote(Committer).options(
            num_cpus=0, scheduling_strategy=here, max_restarts=0).remote(portable(ctx))
        handle = CommitterHandle(actor, ctx)
        try:
            handle.call("open", opener, ctx.ledger is not None,
                        (os.getpid(), pid_space()))
            yield handle
        finally:
            handle.release()


def portable(ctx: RunContext) -> RunContext:
    """The run's context as the committer gets it: no store, no model, no callback, and a
    report of its own (added to the driver's at the end)."""
    own = ctx.report
    report = RunReport(own.run_id, own.source, own.executor, own.model_id, own.policy,
                       started=own.started)
    return dataclasses.replace(ctx, sink=None, ledger=None, encoder=None, report=report,
                               meter=ProgressMeter(None, None))


class CommittedLedger:
    """The ledger as the driver sees it while the committer holds the store (lookups)."""

    def __init__(self, handle: CommitterHandle) -> None:
        self.handle = handle

    def lookup(self, uris: Sequence[str]) -> dict[str, LedgerEntry]:
        return self.handle.call("lookup", list(uris))


def result(ref: ray.ObjectRef) -> Any:
    """A task's result, or the error it raised as itself (a missing source is the user's
    error, said in one line, not a Ray traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise
