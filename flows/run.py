"""The one way to start an ingest run (DESIGN.md §5): the CLI, the flows and the demo call it.

``start_run`` does, in this order and nowhere else:

1. ``check_run``: the source exists, the run id is valid, the preset is known
   and its weights are found (or may be downloaded). Nothing is created before
   these pass, so a run that cannot start leaves no empty collection and no
   alias pointing at one.
2. takes the source's locks (``flows.locks``: the machine-wide file lock and,
   with a Prefect server, the global concurrency slot), so one source is never
   ingested twice at once, whoever started the run;
3. opens the store, ensures the collection of this model and segment policy
   (the alias is pointed at it only when it is unset) and its ledger;
4. records the manifest given for the source (``reembed`` replays it);
5. runs the pipeline (``embed_workers.pipeline.run_ingest``) and writes the
   report, also as Markdown for the flow's artifact.

When a `mediabind ui` holds the embedded store, step 2 onwards happens in its
process instead (``flows.handoff``): search stays up while the run ingests.

It lives in ``flows/`` because it needs both the store and the locks.
``PERMANENT_ERRORS`` are the failures no retry can fix; the flows' retry
policy reads them from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.locks import SourceBusyError, source_key, source_lock, source_slot
from ingest.sources import normalise_source
from schemas import Settings

if TYPE_CHECKING:
    from embed_workers.encoder import Encoder
    from embed_workers.report import ProgressCallback, RunReport


def _permanent_errors() -> tuple[type[BaseException], ...]:
    from embed_workers.model.checkpoint import CheckpointError
    from search.backends.lock import StoreLockedError

    # A missing source or checkpoint, an unaccepted licence, a bad argument, or a store
    # another process holds: retrying the same run gives the same answer.
    return (FileNotFoundError, PermissionError, ValueError, KeyError, LookupError,
            CheckpointError, StoreLockedError, SourceBusyError)


PERMANENT_ERRORS: tuple[type[BaseException], ...] = _permanent_errors()


@dataclass(frozen=True, slots=True)
class CheckedRun:
    """What ``check_run`` established: the run may start."""

    source: str  # normalised (``ingest.sources.normalise_source``)
    run_id: str
    model_id: str


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A finished run: its report, where it wrote and what searches read."""

    report: RunReport
    collection: str  # the physical collection written
    alias: str
    searched: str | None  # the alias's collection after the run (differs after a reembed)
    report_dir: Path

    @property
    def report_json(self) -> Path:
        return self.report_dir / "report.json"

    @property
    def report_markdown(self) -> Path:
        return self.report_dir / "report.md"


def check_run(source: str, settings: Settings, *, run_id: str | None = None,
              encoder: Encoder | None = None) -> CheckedRun:
    """Every check that needs no store and no lock; raises the user's error."""
    from embed_workers.executors import check_run_id, check_weights, preset_model_id
    from embed_workers.pipeline import new_run_id

    check_source(source)
    run_id = run_id or new_run_id()
    check_run_id(run_id)
    if encoder is not None:
        return CheckedRun(normalise_source(source), run_id, encoder.model_id)
    try:
        model_id = preset_model_id(settings.preset)
    except KeyError as exc:  # an unknown preset is the user's error, not a crash
        raise ValueError(exc.args[0]) from None
    check_weights(settings.preset, settings.checkpoint and str(settings.checkpoint), settings)
    return CheckedRun(normalise_source(source), run_id, model_id)


def check_local_decoders(settings: Settings, executor: str) -> None:
    """A decoder asked for by name must run here when decoding runs here (the local
    executor); a Ray run's decode actors judge it on their own nodes."""
    from ingest.decode.audio import audio_decoder
    from ingest.decode.base import DecodeError
    from ingest.decode.video import check_video_decoder

    if executor == "local":
        try:
            check_video_decoder(settings.video_decoder)
            audio_decoder(settings)
        except DecodeError as exc:
            raise ValueError(str(exc)) from None


def check_source(source: str) -> None:
    """A local source must exist now; URLs are checked when they are listed."""
    if "://" in source and not source.startswith("file://"):
        return
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")


def start_run(source: str, settings: Settings, *, executor: str | None = None,
              run_id: str | None = None, manifest: str | None = None,
              progress: ProgressCallback | None = None, encoder: Encoder | None = None,
              lock_wait_s: float | None = None, store: Any = None) -> RunOutcome:
    """Check, lock, ensure the collection, record the manifest, run; see the module doc.

    ``store``: an open store to run on (left open; a `mediabind ui` running a run
    handed to it). Without one, a live `mediabind ui` serving this embedded store
    gets the run (``flows.handoff``) and this process follows it.
    """
    from embed_workers.pipeline import run_ingest
    from flows.handoff import running_ui

    checked = check_run(source, settings, run_id=run_id, encoder=encoder)
    check_local_decoders(settings, executor or settings.executor)
    ui = running_ui(settings) if store is None and encoder is None else None
    if ui is not None:
        return handed_run(ui, checked, settings, executor or settings.executor, manifest,
                          progress)
    with source_slot(checked.source, lock_wait_s), \
            source_lock(settings, checked.source, lock_wait_s), \
            _store_for(settings, store) as store:
        settings = settled_layout(store, settings, checked.model_id)
        physical = store.ensure_collection(checked.model_id, settings.policy)
        if manifest is not None:
            record_manifest(settings, checked.source, manifest)
        ledger = store.ledger()
        report = run_ingest(checked.source, store, settings=settings,
                            executor=executor or settings.executor, encoder=encoder,
                            run_id=checked.run_id, manifest=manifest, progress=progress,
                            ledger=ledger, notes=backfill_notes(store, ledger, physical)
                            + alias_notes(store, settings.collection, physical))
        # A retrained extension's new points are written: its old version's go.
        store.delete_stale_extension_points(checked.source)
        searched = store.backend.get_alias(settings.collection)
    folder = settings.runs_path / report.run_id
    (folder / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return RunOutcome(report, physical, settings.collection, searched, folder)


def settled_layout(store: Any, settings: Settings, model_id: str) -> Settings:
    """The point layout a run writes when ``one_point_items`` is unset: one point per
    single-segment item, unless searches read this model's and segment policy's
    collection in the earlier layout (two points per such item). That collection then
    keeps being written in its own layout, rather than a new one being started beside
    it that searches do not read; ``reembed`` moves it over (``alias_notes`` says so)."""
    from dataclasses import replace

    from search.store import physical_name

    if settings.one_point_items is not None:
        return settings
    earlier = physical_name(model_id, replace(settings.policy, one_point=False))
    keep = store.backend.get_alias(settings.collection) == earlier
    return settings.model_copy(update={"one_point_items": not keep})


def handed_run(ui: Any, checked: CheckedRun, settings: Settings, executor: str,
               manifest: str | None, progress: ProgressCallback | None) -> RunOutcome:
    """The run, run by the `mediabind ui` that holds the store (``flows.handoff``)."""
    from embed_workers.report import RunReport
    from flows.handoff import HandoffError, hand_over

    handed_at = time.time()
    state = hand_over(ui, checked.source, settings, executor=executor, run_id=checked.run_id,
                      manifest=manifest, progress=progress)
    folder = settings.runs_path / checked.run_id
    report = folder / "report.json"
    fresh = report.is_file() and report.stat().st_mtime >= handed_at - 1  # not an old run's
    if not fresh:
        raise HandoffError(f"the run failed in the mediabind ui (pid {ui.pid}): "
                           f"{state.get('error')}")
    return RunOutcome(RunReport.read(folder), state["collection"], settings.collection,
                      state.get("searched"), folder)


@contextmanager
def _store_for(settings: Settings, store: Any) -> Iterator[Any]:
    if store is not None:
        yield store  # the caller's, and it stays open
        return
    with opened_store(settings) as opened:
        yield opened


def backfill_notes(store: Any, ledger: Any, physical: str) -> list[str]:
    """The one-time message when a collection written before the ledger gets one."""
    if ledger.count() or not store.backend.count(physical, None):
        return []
    return [f"{physical} was written before mediabind kept a ledger: this run reads the "
            "source once more to fill it (stored items are recognised by their bytes and "
            "not embedded again); later reruns read only what changed"]


def alias_notes(store: Any, alias: str, physical: str) -> list[str]:
    """Said when searches read another collection than the one this run writes (another
    model or segment policy: a reembed under way, or settings changed since), and when
    the collection written keeps the earlier point layout (``settled_layout``)."""
    policy = store.backend.collection_metadata(physical).get("policy", "")
    searched = store.backend.get_alias(alias)
    if searched in (None, physical):
        if policy.endswith("u"):
            return []
        return [f"{physical} keeps the earlier point layout (two identical points for an "
                "item of one segment); `reembed()` moves it to one point per such item "
                "(policy ids ending in 'u')"]
    read = store.backend.collection_metadata(searched).get("policy", "")
    layout = (" Only the point layout differs (one point per single-segment item, policy "
              "ids ending in 'u'): leave MEDIABIND_ONE_POINT_ITEMS unset to keep writing "
              "the collection searches read." if policy == f"{read}u" else "")
    return [f"searches read {searched} through {alias!r}; this run wrote {physical} (another "
            "model or segment policy): the `reembed` flow fills it and moves the alias once "
            f"it is complete.{layout}"]


@contextmanager
def opened_store(settings: Settings) -> Iterator[Any]:
    """The configured store, closed on the way out (the embedded one admits one process)."""
    from search.store import open_store

    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


# --- the manifest recorded per source (``reembed`` replays it) ---------------------------


def manifest_record_path(settings: Settings, source: str) -> Path:
    return settings.home / "manifests" / f"{source_key(source)}.json"


def record_manifest(settings: Settings, source: str, manifest: str) -> None:
    """Remember the last manifest given for ``source`` (one small JSON per source, written
    under the source's lock, so runs of other sources never race on it)."""
    path = manifest_record_path(settings, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": source, "manifest": str(Path(manifest).expanduser().resolve())}
    path.write_text(json.dumps(record), encoding="utf-8")


def recorded_manifest(settings: Settings, source: str) -> str | None:
    """The manifest last used to ingest ``source`` (None: it was ingested without one)."""
    path = manifest_record_path(settings, source)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["manifest"]
