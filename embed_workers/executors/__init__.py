"""Executors decide placement only: where decode and encode run (DESIGN.md §5).

Both take a ``RunContext`` and drive the same functions of
``embed_workers.pipeline``. The decode workers (local: the decode threads;
Ray: the decode actors) check and pack each segment (``prepare_events``: uint8
frames, waveforms, tokens), and the encoder finishes a batch of packs on its
device (crops, normalisation, fbank) and runs the model (``encode_prepared``). The ``Collector`` (driver
side) turns their events into stored points and the run report. ``ray`` is
imported only when chosen, so the local path never needs Ray.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas import EmbeddingRecord, PointSink, Settings
from schemas.extension import Shipment
from schemas.ledger import Ledger

if TYPE_CHECKING:
    from embed_workers.encoder import Encoder
    from embed_workers.pipeline import RecordBuilder
    from embed_workers.report import ProgressCallback, ProgressMeter, RunReport

# name → "module:function"; the modality-free registry of placements.
EXECUTORS: dict[str, str] = {
    "local": "embed_workers.executors.local:run_local",
    "ray": "embed_workers.executors.ray:run_ray",
}


@dataclass(frozen=True, slots=True)
class EncoderArgs:
    """What a worker needs to build its own Encoder (Ray actors build one each, once)."""

    preset: str
    checkpoint: str | None
    device: str
    dtype: str
    extensions: Shipment = Shipment()  # the driver's modality extensions (mediabind bind)

    def build(self, settings: Settings) -> Encoder:
        from embed_workers.encoder import Encoder

        return Encoder(preset=self.preset, device=self.device, dtype=self.dtype,
                       checkpoint=self.checkpoint, settings=settings)


@dataclass
class RunContext:
    """Everything one run needs; built once by ``make_context``."""

    source: str
    sink: PointSink
    settings: Settings
    executor: str
    run_id: str
    manifest: str | None
    encoder: Encoder | None  # given by the caller; else built where it runs
    encoder_args: EncoderArgs
    builder: RecordBuilder
    report: RunReport
    meter: ProgressMeter
    ledger: Ledger | None = None  # None: no listing skip, nothing recorded (tests, benchmarks)

    @property
    def model_id(self) -> str:
        return self.builder.model_id


def make_context(source: str, sink: PointSink, *, settings: Settings, executor: str,
                 encoder: Encoder | None, run_id: str, manifest: str | None,
                 progress: ProgressCallback | None, ledger: Ledger | None = None) -> RunContext:
    from embed_workers.pipeline import RecordBuilder
    from embed_workers.report import ProgressMeter, RunReport
    from ingest.plan import count_source_items

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of: {', '.join(EXECUTORS)}")
    check_run_id(run_id)
    args = encoder_args_for(settings, encoder)
    if encoder is None:
        check_weights(args.preset, args.checkpoint, settings)
    model_id = encoder.model_id if encoder is not None else preset_model_id(args.preset)
    policy = settings.policy
    report = RunReport(run_id, source, executor, model_id, policy.policy_id)
    return RunContext(source, LockedSink(sink), settings, executor, run_id, manifest, encoder,
                      args, RecordBuilder(model_id, policy, run_id), report,
                      ProgressMeter(progress, count_source_items(source)), ledger)


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_run_id(run_id: str) -> None:
    """Run ids name a folder under runs_dir: no separators, no '..', nothing absolute."""
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use 1-100 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit")


def check_weights(preset_name: str, checkpoint: str | None, settings: Settings) -> None:
    """Find (or, with the licence accepted, download) the checkpoint before the run
    starts: without it every file would be rejected with the same message."""
    from embed_workers.model import get_preset, resolve_checkpoint

    preset = get_preset(preset_name)
    if preset.needs_checkpoint:
        resolve_checkpoint(preset, settings, checkpoint)


def encoder_args_for(settings: Settings, encoder: Encoder | None) -> EncoderArgs:
    """Settings' model, or the given encoder's (so Ray actors rebuild the same model)."""
    preset = getattr(encoder, "preset_name", None) or settings.preset
    checkpoint = getattr(encoder, "checkpoint", None) or settings.checkpoint
    return EncoderArgs(str(getattr(preset, "name", preset)),
                       str(checkpoint) if checkpoint else None,
                       settings.device, settings.dtype, Shipment.of(settings.home))


def preset_model_id(preset: str) -> str:
    """The model id without loading the model (the driver of a Ray run never loads it)."""
    from embed_workers.model.presets import get_preset

    return get_preset(preset).model_id


def get_executor(name: str) -> Callable[[RunContext], None]:
    module, _, function = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), function)


class LockedSink:
    """Serialises sink calls: planning (a feeder thread) and writing (the main thread)
    share one store, and an embedded store is not safe for concurrent callers."""

    def __init__(self, sink: PointSink) -> None:
        self.inner = sink
        self._lock = threading.Lock()

    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        with self._lock:
            self.inner.write(records)

    def completed_items(self, item_ids: Iterable[str]) -> set[str]:
        with self._lock:
            return self.inner.completed_items(item_ids)

    def add_locations(self, item_id: str, source_uris: Sequence[str]) -> None:
        with self._lock:
            self.inner.add_locations(item_id, source_uris)

    def forget_locations(self, item_id: str, source_uris: Sequence[str]) -> int:
        with self._lock:
            return self.inner.forget_locations(item_id, source_uris)
