"""The local executor: one process, decode threads ahead of the encoding main thread.

    feeder thread ──todo (bounded)──► decode threads ──events (bounded)──► main thread
    (list, hash, plan)                 (decode_events,                      (batch per modality,
                                        prepare_events)                      stack + model, write)

Decode threads also check and pack: each segment leaves them as a ``Prepared``
input (uint8 frames, waveforms, tokens; ``embed_workers.prepare``), and the
encoding side finishes a batch at a time on the encoder's device (crops,
normalisation, fbank) before it runs the model. Bounded queues are the backpressure: decoders wait when the model
falls behind, the feeder waits when decoders do, so memory and spooled disk
stay flat whatever the archive's size. The events queue is bounded twice: by
count, and by the bytes of the packs in it (a clip's two uint8 224×398
frames are about 0.53 MB). The model lives on the main thread only.
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
    Unprepared,
    count_tokens_fn,
    decode_events,
    encode_prepared,
    prepare_events,
)
from embed_workers.prepare import Prepared, Preparer
from ingest.plan import PlannedEntry
from schemas import MediaItem, Modality, Rejected
from schemas.extension import modality_of

POLL_S = 0.2
EVENTS_PER_WORKER = 64
# Pack bytes the events queue may hold per decode thread: ~60 uint8 clips, or about
# 250 audio windows; enough to fill the next batch while one is encoded.
TENSOR_BYTES_PER_WORKER = 32 * 2**20
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


class TensorBudget:
    """Bytes of prepared tensors in the events queue: decoders take, the consumer gives back.

    The consumer never waits on it (it gives back as it dequeues), so it cannot
    deadlock; a tensor bigger than the whole budget still passes when the queue
    holds none.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    def take(self, nbytes: int, stop: threading.Event) -> bool:
        with self._changed:
            while self.used and self.used + nbytes > self.limit:
                if stop.is_set():
                    return False
                self._changed.wait(POLL_S)
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._changed:
            self.used -= nbytes
            self._changed.notify_all()


def run_local(ctx: RunContext) -> None:
    encoder = ctx.encoder or ctx.encoder_args.build(ctx.settings)
    _check_model(encoder.model_id, ctx.model_id)
    stream = planned_stream(ctx)
    workers = ctx.settings.decode_workers
    todo: queue.Queue[Any] = queue.Queue(maxsize=workers)
    events: queue.Queue[Any] = queue.Queue(maxsize=EVENTS_PER_WORKER * workers)
    stop = Stop()
    budget = TensorBudget(TENSOR_BYTES_PER_WORKER * workers)
    preparer = Preparer(encoder.options)  # the encoder's own recipe
    threads = [_thread(_feed_todo, stream, todo, events, stop, workers)]
    threads += [_thread(_decode_worker, ctx, preparer, budget, todo, events, stop)
                for _ in range(workers)]
    collector = Collector(ctx)
    try:
        _consume(ctx, encoder, collector, events, stop, budget, producers=len(threads))
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


def _decode_worker(ctx: RunContext, preparer: Preparer, budget: TensorBudget,
                   todo: queue.Queue[Any], events: queue.Queue[Any], stop: Stop) -> None:
    """Decode and preprocess entries until the feeder's end marker; spooled files are released."""
    try:
        count_tokens = count_tokens_fn()
        while True:
            ok, planned = stop.get(todo)
            if not ok or planned is None:
                break
            _decode_one(ctx, planned, _Outbox(events, stop, budget), preparer, count_tokens)
    except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
        stop.put(events, Failure(exc))
    finally:
        stop.put(events, DecoderDone())


@dataclass(frozen=True, slots=True)
class _Outbox:
    """A decode thread's way onto the events queue: tensors pay into the byte budget first."""

    events: queue.Queue[Any]
    stop: Stop
    budget: TensorBudget

    def put(self, event: Any) -> bool:
        if isinstance(event, Prepared) and not self.budget.take(event.nbytes, self.stop.event):
            return False
        return self.stop.put(self.events, event)


def _decode_one(ctx: RunContext, planned: PlannedEntry, outbox: _Outbox, preparer: Preparer,
                count_tokens: Callable[[str], int]) -> None:
    entry = planned.entry
    try:
        if not outbox.put(entry.item):
            return
        decoded = decode_events(entry.item, entry.path, ctx.settings.policy, ctx.settings,
                                count_tokens)
        for event in prepare_events(decoded, preparer):
            if not outbox.put(event):
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

    Inputs arrive packed; batches are finished (on the encoder's device) and encoded on
    ``encode_threads`` threads, so on a GPU one batch's stacking, host→device
    copy and result read-back overlap another's compute. Results come back to
    this thread in any order (the collector does not care); at most twice the
    thread count are in flight, which bounds memory.
    """

    def __init__(self, ctx: RunContext, encoder: Any, collector: Collector,
                 budget: TensorBudget) -> None:
        self.ctx, self.encoder, self.collector, self.budget = ctx, encoder, collector, budget
        self.threads = encode_threads(ctx.settings.encode_threads, encoder)
        self.pool = ThreadPoolExecutor(self.threads, "encode") if self.threads > 1 else None
        self.pending: deque[tuple[Modality, Future[Any]]] = deque()
        # Filled to the encoder's own budget in views for its device (CUDA: larger).
        self.batcher: KeyedBatcher[Modality, Prepared] = KeyedBatcher(
            encoder.views_per_batch, MAX_BATCH_WAIT_S)
        self.live = 0
        self.handlers: dict[type, Callable[[Any], None]] = {
            PlannedEntry: collector.planned,
            MediaItem: collector.begin,
            ItemStarted: collector.started,
            Rejected: collector.rejected,
            ItemDecoded: collector.decoded,
            Prepared: self._prepared,
            Unprepared: self._unprepared,
            FeedDone: self._feed_done,
            DecoderDone: self._producer_done,
            Failure: self._failure,
        }

    def handle(self, event: Any) -> None:
        self.handlers[type(event)](event)

    def _prepared(self, prepared: Prepared) -> None:
        self.budget.give(prepared.nbytes)  # out of the queue; the batcher's own bound holds it now
        for key, batch in self.batcher.add(modality_of(prepared.segment.modality), prepared,
                                           prepared.views):
            self.encode(key, batch)

    def _unprepared(self, event: Unprepared) -> None:
        self.collector.rejected(event.rejected, modality=event.modality)

    def _feed_done(self, event: FeedDone) -> None:
        self.ctx.report.add_stage_time("source", event.seconds)
        self._producer_done(event)

    def _producer_done(self, _event: Any) -> None:
        self.live -= 1

    def _failure(self, event: Failure) -> None:
        raise event.error

    def encode(self, modality: Modality, batch: list[Prepared]) -> None:
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
    """0 = auto: overlap stacking and copies with the GPU on CUDA; on a CPU, torch threads already."""
    if configured:
        return configured
    device = getattr(encoder, "device", None)
    return 4 if getattr(device, "type", str(device)) == "cuda" else 1


def _timed_encode(encoder: Any, batch: list[Prepared]) -> tuple[Any, ...]:
    started = time.perf_counter()
    kept, vectors, rejected = encode_prepared(encoder, batch)
    return kept, vectors, rejected, time.perf_counter() - started


def _consume(ctx: RunContext, encoder: Any, collector: Collector, events: queue.Queue[Any],
             stop: Stop, budget: TensorBudget, producers: int) -> None:
    consumer = _Consumer(ctx, encoder, collector, budget)
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
