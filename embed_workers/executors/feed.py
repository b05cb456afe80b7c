"""The feeder: source listing and planning, run on a thread beside the consumer.

Hands entries to ingest to ``put_todo`` and every other decision to
``put_event``; both return False once the run is stopping, which ends the
feed and (through ``plan_entries``) releases the entries it still holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embed_workers.executors import RunContext
from ingest.plan import Action, PlannedEntry, plan_entries
from ingest.shards import ShardPlan

if TYPE_CHECKING:
    from ingest.sources import IndexBuilder, SourceListing

Put = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class FeedDone:
    """The feed is exhausted (or stopped); ``seconds`` spent listing, hashing and planning."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Failure:
    """A producer thread hit an error that must stop the run (re-raised by the consumer)."""

    error: BaseException


def make_plan(ctx: RunContext, listing: SourceListing | None = None,
              index_with: IndexBuilder | None = None) -> ShardPlan:
    """List the source (no content), anti-join the ledger, cut shards; user errors raise now.

    ``listing``: the source listed elsewhere (a Ray task, where the credentials
    are); else it is listed here. ``index_with``: where a source archive's member
    index is built (``ingest.sources.plan_source``). The shards still to do are written to the
    run's manifest, and the report gets the plan's counts and its time.
    """
    from ingest.shards import write_manifest
    from ingest.sources import plan_source

    started = time.perf_counter()
    plan = plan_source(ctx.source, ctx.settings, ctx.ledger, listing, index_with)
    report = ctx.report
    report.objects_listed, report.shards = plan.listed, len(plan.shards)
    if ctx.ledger is not None:
        report.manifest = str(write_manifest(plan, ctx.settings.runs_path / ctx.run_id
                                             / "manifest.parquet"))
    report.add_stage_time("plan", time.perf_counter() - started)
    return plan


def planned_stream(ctx: RunContext) -> Iterator[PlannedEntry]:
    """The source's entries with their plan, shard after shard, read in this process."""
    from ingest.sources import iter_planned

    source = iter_planned(make_plan(ctx), ctx.settings, ctx.manifest,
                          record_containers=ctx.ledger is not None)
    return plan_entries(source, ctx.sink)


def feed(stream: Iterator[PlannedEntry], put_todo: Put, put_event: Put) -> None:
    """Run the plan to the end; any error is passed on as a ``Failure`` event.

    The stream is made by ``planned_stream`` on the caller's thread, so a user
    error (missing source, bad manifest) raises there, before any thread starts.
    """
    spent = 0.0
    try:
        while True:
            started = time.perf_counter()
            planned = next(stream, None)
            spent += time.perf_counter() - started
            if planned is None:
                break
            put = put_todo if planned.action is Action.INGEST else put_event
            if not put(planned):
                if planned.action is Action.INGEST:
                    planned.entry.release()
                break
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
        put_event(Failure(exc))
    finally:
        getattr(stream, "close", lambda: None)()
        put_event(FeedDone(spent))
