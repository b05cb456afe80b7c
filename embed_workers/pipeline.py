"""The pipeline: source → plan → decode + pack → finish + encode → store, under every executor.

``run_ingest`` is the public entry point (CLI and flows call it). The pieces
here are the functions both executors share, so local and Ray give the same
points: ``decode_events`` (one item → its segments, rejections, and an
end-of-item marker), ``prepare_events`` (each segment checked and packed, in the
same decode worker: uint8 frames, waveforms, tokens), ``encode_prepared`` (a
batch of packs → finished on the encoder's device → vectors, with a
per-segment retry so one bad segment rejects one item, not a batch),
``RecordBuilder`` (segments → ``EmbeddingRecord``; the file-level point = mean
of the item's segment vectors per modality, renormalised) and ``KeyedBatcher``
(batches per modality, flushed when full or when their oldest entry has waited
too long).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from schemas import (
    FILE_LEVEL_INDEX,
    EmbeddingRecord,
    Kind,
    MediaItem,
    Modality,
    PointSink,
    Rejected,
    Segment,
    SegmentPolicy,
    Settings,
    Stage,
    get_settings,
)
from schemas.extension import name_of
from schemas.ledger import Ledger
from schemas.payload import build_payload

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from embed_workers.encoder import Encoder
    from embed_workers.prepare import Prepared, Preparer
    from embed_workers.report import ProgressCallback, RunReport

# Kinds whose duration is probed (payload duration_s, report media seconds).
TIMED_KINDS = frozenset({Kind.VIDEO, Kind.AUDIO})
# A vector further than this from unit norm (or not finite) is a model failure.
NORM_TOLERANCE = 1e-2


def run_ingest(source: str, sink: PointSink, *, settings: Settings | None = None,
               executor: str | None = None, encoder: Encoder | None = None,
               run_id: str | None = None, manifest: str | None = None,
               progress: ProgressCallback | None = None,
               ledger: Ledger | None = None, notes: Sequence[str] = ()) -> RunReport:
    """Ingest ``source`` into ``sink`` and return the run report (also written to disk).

    Incremental and resumable: items the sink reports complete are skipped,
    and point ids are deterministic, so a run killed at any moment and
    restarted leaves every point stored exactly once. With a ``ledger``, objects
    it holds as settled and unchanged are not read at all, and what this run
    settles is recorded there after its points are stored. A bad file becomes a
    ``Rejected`` entry in the report; only a failing sink (or a user error
    such as a missing source) stops the run, and the report still records it.
    """
    from embed_workers.executors import get_executor, make_context

    settings = settings or get_settings()
    ctx = make_context(source, sink, settings=settings, executor=executor or settings.executor,
                       encoder=encoder, run_id=run_id or new_run_id(), manifest=manifest,
                       progress=progress, ledger=ledger)
    ctx.report.notes.extend(notes)
    try:
        get_executor(ctx.executor)(ctx)
    except BaseException as exc:
        ctx.report.finish(exc)
        ctx.report.write(settings.runs_path)
        raise
    ctx.report.finish()
    ctx.report.write(settings.runs_path)
    return ctx.report


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a short random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


# --- decode -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemStarted:
    """First event of an item: its probed duration (for payloads and media seconds)."""

    item_id: str
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class ItemDecoded:
    """Last event of an item: segments per modality, so the collector knows when it is done."""

    item_id: str
    counts: dict[str, int]
    decode_s: float
    failed: bool = False  # the decoder raised: never mark this item complete
    prepare_s: float = 0.0  # preprocessing its segments (set by ``prepare_events``)


DecodeEvent = ItemStarted | Segment | Rejected | ItemDecoded


def decode_events(item: MediaItem, path: Path, policy: SegmentPolicy,
                  settings: Settings | None = None,
                  count_tokens: Callable[[str], int] | None = None) -> Iterator[DecodeEvent]:
    """One item → ItemStarted, its segments and rejections, then ItemDecoded.

    Never raises for a bad file: a decoder exception becomes a DECODE
    rejection. ``decode_s`` counts only time spent inside the decoder, not
    time this generator waited on a full queue downstream.
    """
    from ingest.decode import decode_item

    started = time.perf_counter()
    yield ItemStarted(item.item_id, probe_duration(item, path, settings or get_settings()))
    spent = time.perf_counter() - started
    counts: dict[str, int] = defaultdict(int)
    failed = False
    stream = decode_item(item, path, policy, settings, count_tokens)
    while True:
        t0 = time.perf_counter()
        try:
            out = next(stream)
        except StopIteration:
            spent += time.perf_counter() - t0
            break
        except Exception as exc:  # a decoder bug must not stop the stream
            spent += time.perf_counter() - t0
            failed = True
            yield Rejected(item.item_id, item.source_uri, Stage.DECODE, _describe(exc))
            break
        spent += time.perf_counter() - t0
        if isinstance(out, Segment):
            counts[name_of(out.modality)] += 1
        yield out
    yield ItemDecoded(item.item_id, dict(counts), spent, failed)


def probe_duration(item: MediaItem, path: Path, settings: Settings) -> float | None:
    """Duration of timed media; None for other kinds or when the probe cannot tell.

    A probe failure is not a rejection here: the decoder sees the same bytes
    and rejects them with its own, more precise reason.
    """
    if item.kind not in TIMED_KINDS:
        return None
    from ingest.probe import probe_for

    try:
        return probe_for(path, settings).duration_s
    except Exception:
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {text}"[:2000]


def count_tokens_fn() -> Callable[[str], int]:
    """The CLIP token counter that text chunking needs."""
    from embed_workers.model.tokenizer import count_tokens

    return count_tokens


# --- preprocess (in the decode workers) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unprepared:
    """A segment its preprocessing refused: rejects its item and settles one ``modality`` segment."""

    rejected: Rejected
    modality: str


if TYPE_CHECKING:
    PreparedEvent = ItemStarted | Prepared | Unprepared | Rejected | ItemDecoded


def prepare_events(events: Iterable[DecodeEvent], preparer: Preparer) -> Iterator[PreparedEvent]:
    """One item's decode events with every Segment made model-ready, on the caller's thread.

    The executors run this in their decode workers. A refused input becomes
    ``Unprepared`` (an EMBED rejection, as when the encoder preprocessed);
    the time spent goes into the item's ``ItemDecoded.prepare_s``.
    """
    spent = 0.0
    for event in events:
        if isinstance(event, Segment):
            started = time.perf_counter()
            prepared = prepare_segment(event, preparer)
            spent += time.perf_counter() - started  # not the time a full queue holds the yield
            yield prepared
        elif isinstance(event, ItemDecoded):
            yield replace(event, prepare_s=event.prepare_s + spent)
        else:
            yield event


def prepare_segment(segment: Segment, preparer: Preparer) -> Prepared | Unprepared:
    try:
        return preparer(segment)
    except Exception as exc:  # a bad input rejects its item, never the run
        return Unprepared(_segment_rejection(segment, exc), name_of(segment.modality))


def _segment_rejection(segment: Segment, exc: BaseException) -> Rejected:
    reason = f"segment {segment.modality}#{segment.index}: {_describe(exc)}"
    return Rejected(segment.item_id, "", Stage.EMBED, reason)


# --- encode -----------------------------------------------------------------------------------

T = TypeVar("T")
Encoded = tuple[list[Segment], np.ndarray, list[Rejected]]


def encode_prepared(encoder: Encoder, batch: Sequence[Prepared]) -> Encoded:
    """Encode prepared inputs (stack + model only); a failure is retried one by one.

    Returns the segments (metadata only) that encoded, their vectors (same
    order) and the rejections (``uri`` left empty: the caller knows it).
    """
    return _encode_or_split(list(batch), encoder.encode_prepared, lambda p: p.segment)


def encode_safely(encoder: Encoder, segments: Sequence[Segment]) -> Encoded:
    """As ``encode_prepared``, for raw segments (preprocessed on this thread)."""
    return _encode_or_split(list(segments), encoder.encode_segments, lambda s: s)


def _encode_or_split(batch: list[T], encode: Callable[[list[T]], np.ndarray],
                     segment_of: Callable[[T], Segment]) -> Encoded:
    """Encode a batch; if it fails, retry one by one so only the bad inputs are rejected.

    A failed batch is logged with its cause. A device fault (CUDA out of memory, a
    CUDA or cuDNN error) that comes back on a single input is no bad input: the
    device is broken or full for good, and ``EncoderFault`` stops the run instead of
    rejecting every segment that follows.
    """
    try:
        return [segment_of(x) for x in batch], _checked(encode(batch)), []
    except Exception as exc:
        first = segment_of(batch[0])
        log.warning("a batch of %d %s inputs failed (%s); encoding them one at a time",
                    len(batch), first.modality, _describe(exc))
        device_fault = is_device_fault(exc)
    if device_fault:
        _free_device_cache()  # what the failed batch left cached, before the singles
    kept: list[Segment] = []
    vectors: list[np.ndarray] = []
    rejected: list[Rejected] = []
    for x in batch:
        ok, vec, rej = _encode_one(x, encode, segment_of, device_fault)
        kept += ok
        vectors += list(vec)
        rejected += rej
    return kept, np.asarray(vectors, dtype=np.float32).reshape(len(kept), -1), rejected


def _encode_one(x: T, encode: Callable[[list[T]], np.ndarray],
                segment_of: Callable[[T], Segment], after_device_fault: bool) -> Encoded:
    try:
        return [segment_of(x)], _checked(encode([x])), []
    except Exception as exc:
        if after_device_fault and is_device_fault(exc):
            raise EncoderFault(
                f"the encoder's device failed on a batch and again on one input "
                f"({_describe(exc)}); stopping instead of rejecting every segment. Out of "
                "memory: lower the batch sizes or free the GPU; any other CUDA error: "
                "restart the worker (its CUDA context is lost)") from exc
        return [], np.zeros((0, 0), np.float32), [_segment_rejection(segment_of(x), exc)]


class EncoderFault(RuntimeError):
    """The encoder's device keeps failing: no input can be encoded until it is fixed."""


# Words of the errors a GPU raises when it, not the input, is the problem.
DEVICE_FAULT_WORDS = ("CUDA", "cuDNN", "CUBLAS", "cuBLAS", "device-side assert",
                      "out of memory", "NCCL")


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_device_fault(exc: BaseException) -> bool:
    """An error of the device (out of memory included), not of the input."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in DEVICE_FAULT_WORDS)


def _checked(vectors: np.ndarray) -> np.ndarray:
    """Refuse vectors that must not be stored (NaN, or not unit length)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1)
    if not np.all(np.isfinite(vectors)) or not np.allclose(norms, 1.0, atol=NORM_TOLERANCE):
        raise ValueError("encoder returned non-finite or non-unit vectors")
    return vectors


# --- records ----------------------------------------------------------------------------------


@dataclass
class ModalityMean:
    """Running sum of one item's vectors in one modality (the file-level point's source)."""

    total: np.ndarray
    count: int = 0
    start_s: float | None = None
    end_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, segment: Segment, vector: np.ndarray) -> None:
        self.total += vector
        self.count += 1
        if segment.start_s is not None:
            self.start_s = segment.start_s if self.start_s is None else min(self.start_s, segment.start_s)
        if segment.end_s is not None:
            self.end_s = segment.end_s if self.end_s is None else max(self.end_s, segment.end_s)
        if not self.extra:
            self.extra = {k: segment.extra[k] for k in ("width", "height") if k in segment.extra}

    def vector(self) -> np.ndarray:
        norm = float(np.linalg.norm(self.total))
        return (self.total / norm if norm > 0 else self.total).astype(np.float32)


@dataclass(frozen=True, slots=True)
class RecordBuilder:
    """Turns encoded segments into records with the contract's ids and payloads."""

    model_id: str
    policy: SegmentPolicy
    run_id: str

    def segment_record(self, item: MediaItem, segment: Segment, vector: np.ndarray,
                       duration_s: float | None) -> EmbeddingRecord:
        payload = build_payload(item, segment, model_id=self.model_id, policy=self.policy,
                                run_id=self.run_id, duration_s=duration_s)
        return EmbeddingRecord(self._id(item, segment.modality, segment.index),
                               np.asarray(vector, np.float32), payload)

    def file_level_record(self, item: MediaItem, modality: Modality, mean: ModalityMean,
                          duration_s: float | None) -> EmbeddingRecord:
        whole = Segment(item.item_id, modality, item.kind, FILE_LEVEL_INDEX, mean.start_s,
                        mean.end_s, np.zeros(0, np.float32), dict(mean.extra))
        payload = build_payload(item, whole, model_id=self.model_id, policy=self.policy,
                                run_id=self.run_id, duration_s=duration_s)
        return EmbeddingRecord(self._id(item, modality, FILE_LEVEL_INDEX), mean.vector(), payload)

    @staticmethod
    def whole_record(segment: EmbeddingRecord) -> EmbeddingRecord:
        """The one segment of an item as the item's one point: segment and file at once."""
        # 1, not True: qdrant-edge matches no boolean payload value
        return EmbeddingRecord(segment.point_id, segment.vector, segment.payload | {"whole": 1})

    def _id(self, item: MediaItem, modality: Modality | str, index: int) -> str:
        from schemas import point_id

        return point_id(item.item_id, modality, index, self.policy, self.model_id)


# --- batching ---------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedBatcher(Generic[K, V]):
    """Groups values per key (the modality) into batches of that key's size.

    Sizes count weights: a model view each (``Prepared.views``: a 3-crop
    video clip weighs 3), so a batch fills to the encoder's budget for its device.
    A batch leaves when full, or when its oldest value has waited ``max_wait_s``
    (so a rare modality does not hold its items open until the end of the run),
    or at ``drain``.
    """

    def __init__(self, size_of: Callable[[K], int], max_wait_s: float = 2.0) -> None:
        self.size_of, self.max_wait_s = size_of, max_wait_s
        self._open: dict[K, list[V]] = {}
        self._weight: dict[K, int] = {}
        self._since: dict[K, float] = {}

    def add(self, key: K, value: V, weight: int = 1) -> list[tuple[K, list[V]]]:
        batch = self._open.setdefault(key, [])
        self._since.setdefault(key, time.monotonic())
        batch.append(value)
        self._weight[key] = self._weight.get(key, 0) + weight
        return [self._take(key)] if self._weight[key] >= self.size_of(key) else []

    def due(self) -> list[tuple[K, list[V]]]:
        now = time.monotonic()
        return [self._take(k) for k, t in list(self._since.items()) if now - t >= self.max_wait_s]

    def drain(self) -> list[tuple[K, list[V]]]:
        return [self._take(k) for k in list(self._open)]

    def __len__(self) -> int:
        return sum(len(v) for v in self._open.values())

    def _take(self, key: K) -> tuple[K, list[V]]:
        self._since.pop(key, None)
        self._weight.pop(key, None)
        return key, self._open.pop(key)
