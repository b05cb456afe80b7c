"""What the page and the JSON API ask of the search module, in one place.

``SearchRequest`` is a search as the web sends it (the query in the page's URL,
or a JSON body with uploads). ``Service.search`` turns it into exactly one
``MediaSearch.search`` call, so the page, the API and the Python client rank
alike for the same inputs. Everything here goes through ``MediaSearch``'s and
``VectorStore``'s public methods.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas import Settings
from search import MediaSearch, SearchResults
from search.query import keyword_for_file
from web.media import MediaCache
from web.thumbs import Thumbnails

log = logging.getLogger(__name__)
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
RUNS_LISTED = 200


class UploadTooLarge(ValueError):
    """An upload beyond ``MEDIABIND_MAX_QUERY_BYTES`` (HTTP 413)."""


class RunRequest(BaseModel):
    """A run handed to this server by ``flows.handoff`` (`mediabind ingest` elsewhere)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(max_length=4096)
    run_id: str = Field(max_length=128)  # checked by start_run (check_run_id)
    executor: str = "local"
    manifest: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class SearchRequest(BaseModel):
    """One search from the page or a tool. Inputs of one keyword share its weight, as in
    ``MediaSearch.search``; ``like`` is stored points whose own vectors join the query
    (``vector=``, "more like this")."""

    model_config = ConfigDict(extra="forbid")

    text: list[str] = Field(default_factory=list, max_length=8)
    like: list[str] = Field(default_factory=list, max_length=8)
    negative_text: list[str] = Field(default_factory=list, max_length=8)
    negative_like: list[str] = Field(default_factory=list, max_length=8)
    weights: dict[str, float] = Field(default_factory=dict)
    negative_weight: float | None = Field(None, ge=0, le=1)
    kinds: list[str] = Field(default_factory=list, max_length=16)
    modalities: list[str] = Field(default_factory=list, max_length=16)
    archive: str | None = Field(None, max_length=4096)
    from_s: float | None = Field(None, ge=0)
    to_s: float | None = Field(None, ge=0)
    limit: int = Field(12, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)
    moments: int = Field(3, ge=1, le=10)


@dataclass(frozen=True, slots=True)
class Upload:
    """A file sent with a search, already on disk (a temp folder, removed after)."""

    path: Path
    negative: bool = False


class Service:
    """The store, the search client and the media caches one web server shares."""

    def __init__(self, settings: Settings, client: MediaSearch | None = None) -> None:
        self.settings = settings
        self._owns_client = client is None
        self.client = client or MediaSearch(settings)
        self.media = MediaCache(settings)
        self.thumbs = Thumbnails(settings, self.media)
        self._runs: dict[str, dict[str, Any]] = {}  # handed runs: run id -> state
        self._runs_lock = threading.Lock()
        self._one_run = threading.Lock()  # handed runs go one after another
        self._threads: list[threading.Thread] = []
        self._closing = False

    def close(self) -> None:
        """Let handed runs finish (refusing new ones), then close the search client (and so
        the store) if this service opened it."""
        self._closing = True
        for thread in self._threads:
            thread.join()
        if self._owns_client:
            self.client.close()

    # --- search ------------------------------------------------------------------------

    def search(self, request: SearchRequest, uploads: Sequence[Upload] = ()) -> SearchResults:
        positive = self._inputs(request.text, request.like, [u for u in uploads if not u.negative])
        negative = self._inputs(request.negative_text, request.negative_like,
                                [u for u in uploads if u.negative])
        return self.client.search(
            inputs=positive, weights=request.weights or None, negative=negative or None,
            negative_weight=request.negative_weight if negative else None,
            kinds=request.kinds or None, modalities=request.modalities or None,
            where=_where(request), limit=request.limit, offset=request.offset,
            moments=request.moments)

    def _inputs(self, texts: list[str], likes: list[str],
                uploads: Sequence[Upload]) -> dict[str, list[Any]]:
        inputs: dict[str, list[Any]] = {}
        for text in texts:
            if text.strip():
                inputs.setdefault("text", []).append(text)
        for point_id in likes:
            inputs.setdefault("vector", []).append(self.client.stored_vector(point_id))
        for upload in uploads:
            keyword = keyword_for_file(upload.path, self.client.settings.home)
            inputs.setdefault(keyword, []).append(upload.path)
        return inputs

    # --- what the page shows beside results -------------------------------------------

    def info(self) -> dict[str, Any]:
        store = self.client.store
        info = store.collection_info()
        return {**{k: info.get(k) for k in ("alias", "physical", "model_id", "policy")},
                "points": store.count(), "index": store.index_state(),
                "kinds": store.count_by("kind"),
                "modalities": store.count_by("modality"), "archives": store.count_by("archive")}

    def point(self, point_id: str) -> dict[str, Any]:
        return dict(self.client.point(point_id).payload)

    # --- runs handed to this process (flows.handoff) ---------------------------------

    def start_run(self, request: RunRequest) -> dict[str, Any]:
        """Run a handed run in a thread, on the store this server holds."""
        from flows.handoff import RUN_SETTINGS

        if request.executor != "local":
            raise ValueError("a run handed to mediabind ui runs with the local executor: a "
                             "Ray run lends the embedded store to its committer, which this "
                             "page cannot spare. Stop the ui for it, or use a Qdrant server")
        unknown = set(request.settings) - set(RUN_SETTINGS)
        if unknown:
            raise ValueError(f"a handed run cannot change {sorted(unknown)}")
        checked = Settings(**request.settings)  # validated as any settings are
        settings = self.settings.model_copy(
            update={k: getattr(checked, k) for k in request.settings})  # on this store
        with self._runs_lock:
            if self._closing:
                raise ValueError("this mediabind ui is stopping; run again once it has")
            if self._runs.get(request.run_id, {}).get("state") == "running":
                return dict(self._runs[request.run_id])  # the caller again: it follows it
            state = {"run_id": request.run_id, "source": request.source, "state": "running",
                     "progress": None, "error": None, "collection": None, "searched": None}
            self._runs[request.run_id] = state
            thread = threading.Thread(target=self._run, args=(request, settings, state),
                                      daemon=True, name=f"run-{request.run_id}")
            self._threads.append(thread)
        thread.start()
        return dict(state)

    def _run(self, request: RunRequest, settings: Settings, state: dict[str, Any]) -> None:
        from dataclasses import asdict

        def record(progress: Any) -> None:
            state["progress"] = asdict(progress)

        try:
            from flows.run import start_run  # in the guard: a failed import fails the run
            from search.store import VectorStore

            held = self.client.store  # one engine, one lock: this run and the page share it
            store = VectorStore(held.backend, settings, held.kind)
            with self._one_run:
                outcome = start_run(request.source, settings, executor="local",
                                    run_id=request.run_id, manifest=request.manifest,
                                    progress=record, store=store)
        except BaseException as exc:  # noqa: BLE001 - the state carries it to the caller,
            # whatever it is: a thread that ended silently would leave it "running" forever
            state.update(state="failed", error=f"{type(exc).__name__}: {exc}")
            return
        state.update(collection=outcome.collection, searched=outcome.searched,
                     state="failed" if outcome.report.error else "done",
                     error=outcome.report.error)
        try:  # what a closing store would do; an extra, never the run's outcome
            store.optimize_if_due()
        except Exception as exc:  # noqa: BLE001
            log.warning("the vector index was not built after run %s: %s", request.run_id, exc)

    def run_state(self, run_id: str) -> dict[str, Any]:
        with self._runs_lock:
            if run_id not in self._runs:
                raise KeyError(f"no run {run_id!r} was handed to this server")
            return dict(self._runs[run_id])

    def active_runs(self) -> list[dict[str, Any]]:
        with self._runs_lock:
            return [dict(s) for s in self._runs.values() if s["state"] == "running"]

    # --- run reports -------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """The newest run reports first, each as its headline figures."""
        reports = sorted(self.settings.runs_path.glob("*/report.json"),
                         key=lambda p: p.stat().st_mtime, reverse=True)[:RUNS_LISTED]
        return [_headline(r) for r in (_read_report(p) for p in reports) if r is not None]

    def run(self, run_id: str) -> dict[str, Any]:
        from embed_workers.executors import check_run_id
        from embed_workers.report import summary_text

        try:
            check_run_id(run_id)  # it names a folder: the rule every run id follows
        except ValueError:
            raise KeyError(f"no run {run_id!r}") from None
        report = _read_report(self.settings.runs_path / run_id / "report.json")
        if report is None:
            raise KeyError(f"no run {run_id!r}")
        return {**report, "summary": summary_text(report)}


def _where(request: SearchRequest) -> dict[str, Any] | None:
    where: dict[str, Any] = {}
    if request.archive:
        where["archive"] = request.archive
    if request.from_s is not None:
        where["start_s"] = {"gte": request.from_s}
    if request.to_s is not None:
        where["end_s"] = {"lte": request.to_s}
    return where or None


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "source", "executor", "model_id", "policy", "started", "finished",
            "wall_seconds", "items_seen", "items_completed", "items_rejected",
            "items_unchanged", "points_written", "media_seconds", "error")
    return {k: report.get(k) for k in keys}


@contextmanager
def saved_uploads(files: Sequence[tuple[str, bool, Any]], max_bytes: int,
                  home: Path) -> Iterator[list[Upload]]:
    """Uploaded files (name, negative, readable) copied into a temp folder under
    ``home``, each at most ``max_bytes`` (ValueError beyond); the folder goes after."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mediabind-upload-", dir=home / "tmp") as tmp:
        uploads = []
        for i, (name, negative, stream) in enumerate(files):
            path = Path(tmp) / f"{i}-{_safe_name(name)}"
            _copy_capped(stream, path, max_bytes, name)
            uploads.append(Upload(path, negative))
        yield uploads


def _safe_name(name: str) -> str:
    """The upload's base name, kept for what it says (``x.depth.png``), made harmless."""
    base = SAFE_NAME.sub("_", Path(name or "upload").name).lstrip(".")[-120:]
    return base or "upload"


def _copy_capped(stream: Any, path: Path, max_bytes: int, name: str) -> None:
    copied = 0
    with path.open("wb") as out:
        while chunk := stream.read(1 << 20):
            copied += len(chunk)
            if copied > max_bytes:
                raise UploadTooLarge(f"the upload {name!r} is larger than {max_bytes} bytes "
                                 "(MEDIABIND_MAX_QUERY_BYTES)")
            out.write(chunk)
