"""The local executor: one process, decode threads ahead of the encoding main thread.

    feeder thread ──todo (bounded)──► decode threads ──events (bounded)──► main thread
    (list, hash, plan)                 (decode_events)                      (batch per modality,
                                                                             encode, write)

Bounded queues are the backpressure: decoders wait when the model falls
behind, the feeder waits when decoders do, so memory and spooled disk stay
flat whatever the archive's size. The model lives on the main thread only.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from embed_workers.executors import RunContext
from embed_workers.executors.collect import Collector
from embed_workers.executors.feed import Failure, FeedDone, feed, planned_stream
from embed_workers.pipeline import (
    ItemDecoded,
    ItemStarted,
    KeyedBatcher,
    count_tokens_fn,
    decode_events,
    encode_safely,
)
from ingest.plan import PlannedEntry
from schemas import MediaItem, Modality, Rejected, Segment, spec

POLL_S = 0.2
EVENTS_PER_WORKER = 64
MAX_BATCH_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class DecoderDone:
    """A decode thread has no more work."""


class Stop:
    """The run's stop flag, and queue operations that give up once it is set."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def put(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self.event.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue[Any]) -> tuple[bool, Any]:
        while not self.event.is_set():
            try:
                return True, q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return False, None


def run_local(ctx: RunContext) -> None:
    encoder = ctx.encoder or ctx.encoder_args.build(ctx.settings)
    _check_model(encoder.model_id, ctx.model_id)
    stream = planned_stream(ctx)
    workers = ctx.settings.decode_workers
    todo: queue.Queue[Any] = queue.Queue(maxsize=workers)
    events: queue.Queue[Any] = queue.Queue(maxsize=EVENTS_PER_WORKER * workers)
    stop = Stop()
    threads = [_thread(_feed_todo, stream, todo, events, stop, workers)]
    threads += [_thread(_decode_worker, ctx, todo, events, stop) for _ in range(workers)]
    collector = Collector(ctx)
    try:
        _consume(ctx, encoder, collector, events, stop, producers=len(threads))
        collector.close()
    finally:
        stop.event.set()
        for t in threads:
            t.join(timeout=ctx.settings.ffmpeg_timeout_s)
        _release_waiting(todo)
        collector.abandon()


def _check_model(built: str, expected: str) -> None:
    if built != expected:
        raise RuntimeError(f"encoder model id {built!r} differs from the run's {expected!r}")


def _thread(target: Callable[..., None], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True, name=target.__name__)
    thread.start()
    return thread


def _feed_todo(stream: Iterator[PlannedEntry], todo: queue.Queue[Any], events: queue.Queue[Any], stop: Stop,
               workers: int) -> None:
    """The feeder, then one end marker per decode thread."""
    try:
        feed(stream, lambda p: stop.put(todo, p), lambda e: stop.put(events, e))
    finally:
        for _ in range(workers):
            stop.put(todo, None)


def _decode_worker(ctx: RunContext, todo: queue.Queue[Any], events: queue.Queue[Any],
                   stop: Stop) -> None:
    """Decode entries until the feeder's end marker; the spooled file is released after."""
    try:
        count_tokens = count_tokens_fn()
        while True:
            ok, planned = stop.get(todo)
            if not ok or planned is None:
                break
            _decode_one(ctx, planned, events, stop, count_tokens)
    except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
        stop.put(events, Failure(exc))
    finally:
        stop.put(events, DecoderDone())


def _decode_one(ctx: RunContext, planned: PlannedEntry, events: queue.Queue[Any], stop: Stop,
                count_tokens: Callable[[str], int]) -> None:
    entry = planned.entry
    try:
        if not stop.put(events, entry.item):
            return
        for event in decode_events(entry.item, entry.path, ctx.settings.policy, ctx.settings,
                                   count_tokens):
            if not stop.put(events, event):
                return
    finally:
        entry.release()


def _release_waiting(todo: queue.Queue[Any]) -> None:
    while True:
        try:
            planned = todo.get_nowait()
        except queue.Empty:
            return
        if planned is not None:
            planned.entry.release()


# --- the main thread ----------------------------------------------------------------------


class _Consumer:
    """Dispatches events by type (a registry, not a branch chain) and owns the batcher.

    Batches are encoded on ``encode_threads`` threads: the Encoder preprocesses
    on the calling thread's CPU, so with one thread a GPU idles while the next
    batch is resized and cropped. Results come back to this thread in any
    order (the collector does not care); at most twice the thread count are
    in flight, which bounds memory.
    """

    def __init__(self, ctx: RunContext, encoder: Any, collector: Collector) -> None:
        self.ctx, self.encoder, self.collector = ctx, encoder, collector
        self.threads = encode_threads(ctx.settings.encode_threads, encoder)
        self.pool = ThreadPoolExecutor(self.threads, "encode") if self.threads > 1 else None
        self.pending: deque[tuple[Modality, Future[Any]]] = deque()
        self.batcher: KeyedBatcher[Modality, Segment] = KeyedBatcher(
            lambda m: spec(m).batch_size, MAX_BATCH_WAIT_S)
        self.live = 0
        self.handlers: dict[type, Callable[[Any], None]] = {
            PlannedEntry: collector.planned,
            MediaItem: collector.begin,
            ItemStarted: collector.started,
            Rejected: collector.rejected,
            ItemDecoded: collector.decoded,
            Segment: self._segment,
            FeedDone: self._feed_done,
            DecoderDone: self._producer_done,
            Failure: self._failure,
        }

    def handle(self, event: Any) -> None:
        self.handlers[type(event)](event)

    def _segment(self, segment: Segment) -> None:
        for key, batch in self.batcher.add(Modality(segment.modality), segment):
            self.encode(key, batch)

    def _feed_done(self, event: FeedDone) -> None:
        self.ctx.report.add_stage_time("source", event.seconds)
        self._producer_done(event)

    def _producer_done(self, _event: Any) -> None:
        self.live -= 1

    def _failure(self, event: Failure) -> None:
        raise event.error

    def encode(self, modality: Modality, batch: list[Segment]) -> None:
        if self.pool is None:
            self._apply(modality, _timed_encode(self.encoder, batch))
            return
        self.pending.append((modality, self.pool.submit(_timed_encode, self.encoder, batch)))
        while len(self.pending) > 2 * self.threads:  # backpressure: wait for the oldest
            modality, future = self.pending.popleft()
            self._apply(modality, future.result())
        self.harvest()

    def harvest(self, *, wait: bool = False) -> None:
        """Apply finished encodes (all of them, waiting, when ``wait``)."""
        for entry in list(self.pending):
            modality, future = entry
            if wait or future.done():
                self.pending.remove(entry)
                self._apply(modality, future.result())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _apply(self, modality: Modality, result: tuple[Any, ...]) -> None:
        kept, vectors, rejected, seconds = result
        self.ctx.report.add_stage_time("encode", seconds)
        if kept:
            self.collector.encoded(kept, vectors)
        for r in rejected:
            self.collector.rejected(r, modality=modality.value)


def encode_threads(configured: int, encoder: Any) -> int:
    """0 = auto: overlap preprocessing with the GPU on CUDA; on a CPU, torch threads already."""
    if configured:
        return configured
    device = getattr(encoder, "device", None)
    return 4 if getattr(device, "type", str(device)) == "cuda" else 1


def _timed_encode(encoder: Any, batch: list[Segment]) -> tuple[Any, ...]:
    started = time.perf_counter()
    kept, vectors, rejected = encode_safely(encoder, batch)
    return kept, vectors, rejected, time.perf_counter() - started


def _consume(ctx: RunContext, encoder: Any, collector: Collector, events: queue.Queue[Any],
             stop: Stop, producers: int) -> None:
    consumer = _Consumer(ctx, encoder, collector)
    consumer.live = producers
    try:
        while consumer.live > 0:
            event = _next_event(events)
            if event is not None:
                consumer.handle(event)
            for key, batch in consumer.batcher.due():
                consumer.encode(key, batch)
            consumer.harvest()
            collector.tick()
        for key, batch in consumer.batcher.drain():
            consumer.encode(key, batch)
        consumer.harvest(wait=True)
    finally:
        consumer.close()


def _next_event(events: queue.Queue[Any]) -> Any:
    try:
        return events.get(timeout=POLL_S)
    except queue.Empty:
        return None
