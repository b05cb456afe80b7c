"""The vector store: Qdrant collections, aliases, upserts, deletes (DESIGN.md §2).

One ``VectorStore`` over three engines (``search.backends``): ``edge`` (the
default embedded engine), ``local`` (qdrant-client's embedded mode) and
``server``. The same tests run against each (tests/test_store.py).

Names: searches go through the alias ``settings.collection``; the physical
collection behind it is ``collection_name(model_id, policy)``, with its model,
policy and dimension recorded next to it, so a query from another model is
refused. ``ensure_collection`` makes a collection the *write target* of this
store handle: writes (the ``PointSink`` methods) go there while reads keep
going through the alias, which is how a re-embed into a new collection runs
beside the old one until ``swap_alias`` (blue/green).

Embedded stores belong to one process (``StoreLockedError`` names the holder).
On edge, HNSW is built by ``optimize()``; closing a store whose collection
holds at least ``settings.optimize_after_points`` points not yet indexed calls
it, whoever wrote them and in however many runs. Until then search is exact,
which is fine for that many points.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from schemas.extension import stale_versions
from schemas.payload import COMPLETING_POINTS, INDEXED_FIELDS, SegmentPolicy
from schemas.payload import collection_name as physical_name
from schemas.records import EmbeddingRecord
from schemas.settings import Settings, get_settings
from search.backends import Backend, CollectionSpec, Group, Point, ScoredPoint, open_backend
from search.backends.lock import StoreLockedError
from search.filters import Where, any_of, parse_where
from search.ledger import StoreLedger, drop_ledger
from search.records import check_id, check_record, check_vector, upsert_spans

log = logging.getLogger(__name__)
__all__ = ["Group", "Point", "ScoredPoint", "StoreLockedError", "VectorStore", "open_store"]

VECTOR_DIM = 1024
RETRY_ATTEMPTS = 5
RETRY_BASE_S = 0.2
ID_CHUNK = 512  # item ids per filter in completed_items / delete_items
PAGE = 1024  # points per scroll page
OVERFETCH = 4  # candidates per wanted hit when grouping without engine support
MAX_GROUP_FETCH = 20_000
COMPLETING = parse_where(COMPLETING_POINTS)  # an item's completion mark (``schemas.payload``)
GROUP_FIELDS = tuple(f for f, kind in INDEXED_FIELDS.items() if kind == "keyword")
Where_ = Mapping[str, Any] | Where | None
T = TypeVar("T")


class VectorStore:
    def __init__(self, backend: Backend, settings: Settings, kind: str | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.kind = kind or settings.store_kind  # which engine (``search.backends.BACKENDS``)
        self.alias = settings.collection
        self._target: str | None = None
        self._specs: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"VectorStore({self.backend!r}, alias={self.alias!r})"

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collections and the alias ---------------------------------------------------

    def ensure_collection(self, model_id: str, policy: SegmentPolicy, *,
                          dim: int = VECTOR_DIM) -> str:
        """Create (if needed) the collection for model + policy and make it the write target."""
        name = physical_name(model_id, policy)
        if not self.backend.collection_exists(name):
            self.backend.create_collection(name, CollectionSpec(
                dim, model_id, policy.policy_id, self.settings.quantization,
                self.settings.on_disk_vectors))
        elif self._spec(name)["dim"] != dim:
            raise ValueError(f"collection {name} holds {self._spec(name)['dim']}-d vectors, "
                             f"not {dim}-d")
        # Only an unset alias is pointed here: moving one is a reembed's explicit swap.
        # (Callers check the source and the weights first, so a run that cannot start
        # creates nothing.)
        if self.backend.get_alias(self.alias) is None:
            self.backend.set_alias(self.alias, name)
        self._target = name
        return name

    def swap_alias(self, new_physical: str) -> str | None:
        """Atomically repoint the alias (blue/green); returns the previous collection."""
        if not self.backend.collection_exists(new_physical):
            raise ValueError(f"no collection {new_physical!r} to point {self.alias!r} at")
        old = self.backend.get_alias(self.alias)
        self.retry(lambda: self.backend.set_alias(self.alias, new_physical))
        return old

    def drop_collection(self, physical: str) -> None:
        """Delete a physical collection no alias points at (e.g. the old side of a swap)."""
        if not self.backend.collection_exists(physical):
            raise ValueError(f"no collection {physical!r} to drop")
        in_use = self.backend.aliases_of(physical)
        if in_use or physical == self._target:
            users = ", ".join(in_use) or "this store's writes"
            raise ValueError(f"refusing to drop {physical!r}: it is in use by {users}")
        self.retry(lambda: self.backend.drop_collection(physical))
        self.retry(lambda: drop_ledger(self.backend, physical))
        self._specs.pop(physical, None)

    @contextmanager
    def lend(self) -> Iterator[StoreOpener]:
        """Hand this store to another process for a while (a Ray run's committer).

        Yields a picklable ``StoreOpener`` that opens the same engine with the same
        write target there. An embedded engine admits one process, so this handle
        closes it meanwhile and opens it again on the way out (waiting for the
        borrower's process to let go); a server is shared and stays open.
        """
        one_process = self.backend.one_process
        opener = StoreOpener(_absolute(self.settings), self.kind, self._write_name(),
                             socket.gethostname() if one_process else None)
        if not one_process:
            yield opener
            return
        self.backend.close()
        try:
            yield opener
        except BaseException:
            try:
                self.backend = _reopened(self.kind, self.settings)
            except StoreLockedError as exc:  # the run's own error is the one to see
                log.warning("could not open the store again after a failed run: %s", exc)
            raise
        self.backend = _reopened(self.kind, self.settings)

    def ledger(self) -> StoreLedger:
        """The ledger of the write target (``schemas.ledger``), kept beside its points."""
        return StoreLedger(self, self._write_name())

    def _read_name(self) -> str:
        name = self.backend.get_alias(self.alias)
        if name is None:
            raise LookupError(f"the store has no collection behind {self.alias!r} yet: "
                              "ingest something first (or call ensure_collection)")
        return name

    def _write_name(self) -> str:
        return self._target or self._read_name()

    def _spec(self, name: str) -> dict[str, Any]:
        if name not in self._specs:
            self._specs[name] = self.backend.collection_metadata(name)
        return self._specs[name]

    def collection_info(self) -> dict[str, Any]:
        name = self._read_name()
        spec = self._spec(name)
        return {"alias": self.alias, "physical": name, "backend": self.backend.name,
                "model_id": spec["model_id"], "policy": spec["policy"], "dim": spec["dim"],
                "points": self.backend.count(name, None), "write_target": self._write_name()}

    # --- PointSink -----------------------------------------------------------------------

    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        """Idempotent batched upsert; the whole call is validated before anything is written."""
        if not records:
            return
        name = self._write_name()
        spec = self._spec(name)
        vectors = [check_record(r, spec) for r in records]
        for start, end in upsert_spans(records, self.settings.upsert_batch):
            ids = [r.point_id for r in records[start:end]]
            payloads = [r.payload for r in records[start:end]]
            stacked = np.stack(vectors[start:end])
            self.retry(lambda i=ids, v=stacked, p=payloads: self.backend.upsert(name, i, v, p))

    def completed_items(self, item_ids: Iterable[str]) -> set[str]:
        """Items whose completing point is stored in the write target: a file-level point
        (segment_index == -1), or the one point of a single-segment item (``whole``)."""
        if self._target is None and self.backend.get_alias(self.alias) is None:
            return set()  # no collection yet: nothing is stored, so nothing is complete
        name = self._write_name()
        done: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(item_ids)), ID_CHUNK):
            where = self.live(any_of("item_id", chunk).and_(COMPLETING))
            done.update(p.payload["item_id"] for p in self._iter(name, where, ["item_id"]))
        return done

    def add_locations(self, item_id: str, source_uris: Sequence[str]) -> None:
        """Union more paths of the same bytes into every point of the item.

        Cheap when nothing is new (every rerun calls it for every skipped item):
        the known paths are read from the item's completing points only, and
        the item's points are rewritten only when a path is new.
        """
        name = self._write_name()
        where = any_of("item_id", [item_id])
        known = self._known_uris(name, where.and_(COMPLETING)) or self._known_uris(name, where)
        merged = list(dict.fromkeys([*known, *source_uris]))
        if known and merged != list(dict.fromkeys(known)):
            self.retry(lambda: self.backend.set_payload(name, where, {"source_uri": merged}))

    def forget_locations(self, item_id: str, source_uris: Sequence[str]) -> int:
        """These paths no longer hold the item's bytes: drop them from its points, and
        delete the item when no path is left. Returns the number of points removed."""
        name = self._write_name()
        where = any_of("item_id", [item_id])
        known = list(dict.fromkeys(self._known_uris(name, where.and_(COMPLETING))
                                   or self._known_uris(name, where)))
        gone = set(source_uris)
        kept = [u for u in known if u not in gone]
        if not known or kept == known:
            return 0
        if kept:
            self.retry(lambda: self.backend.set_payload(name, where, {"source_uri": kept}))
            return 0
        return self._delete(name, where)

    def _known_uris(self, name: str, where: Where) -> list[str]:
        return [u for p in self._iter(name, where, ["source_uri"])
                for u in _as_list(p.payload.get("source_uri"))]

    # --- reading -------------------------------------------------------------------------

    def search(self, vector: np.ndarray, *, where: Where_ = None, limit: int = 10,
               offset: int = 0, exclude: Iterable[str] | None = None,
               model_id: str | None = None) -> list[ScoredPoint]:
        """Nearest points by cosine; ``exclude`` drops item ids; ``model_id`` is checked."""
        name, query = self._query_target(vector, model_id)
        return self.backend.query(name, query, self.live(_with_exclusions(where, exclude)),
                                  limit, offset)

    def search_groups(self, vector: np.ndarray, *, group_by: str = "item_id",
                      where: Where_ = None, limit: int = 10, group_size: int = 3,
                      exclude: Iterable[str] | None = None,
                      model_id: str | None = None) -> list[Group]:
        """Best ``limit`` groups (source files by default), each with its best hits first.

        Engines without native grouping (edge) over-fetch ``limit * group_size * 4``
        candidates and group them here, fetching more while fewer than ``limit`` groups
        appear. The groups found are the true best groups; one may hold fewer than
        ``group_size`` hits when its other points rank below every fetched candidate.
        """
        if group_by not in GROUP_FIELDS:
            raise ValueError(f"group_by must be one of {GROUP_FIELDS}, got {group_by!r}")
        name, query = self._query_target(vector, model_id)
        filt = self.live(_with_exclusions(where, exclude))
        if self.backend.native_groups:
            return self.backend.query_groups(name, query, filt, group_by, limit, group_size)
        return self._groups_by_overfetch(name, query, filt, group_by, limit, group_size)

    def _groups_by_overfetch(self, name: str, query: np.ndarray, where: Where | None,
                             group_by: str, limit: int, group_size: int) -> list[Group]:
        fetch = max(limit * group_size * OVERFETCH, 16)
        while True:
            hits = self.backend.query(name, query, where, fetch, 0)
            groups = _group_hits(hits, group_by, group_size)
            if len(groups) >= limit or len(hits) < fetch or fetch >= MAX_GROUP_FETCH:
                return groups[:limit]
            fetch = min(fetch * 4, MAX_GROUP_FETCH)

    def _query_target(self, vector: np.ndarray, model_id: str | None) -> tuple[str, np.ndarray]:
        name = self._read_name()
        spec = self._spec(name)
        if model_id is not None and model_id != spec["model_id"]:
            raise ValueError(f"the query was embedded with {model_id!r} but {self.alias!r} "
                             f"holds {spec['model_id']!r} vectors; they are not comparable")
        return name, check_vector(vector, spec["dim"], unit=False)

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        return self.backend.retrieve(self._read_name(), [check_id(i) for i in ids], with_vectors)

    def scroll(self, where: Where_ = None, limit: int = 100) -> list[Point]:
        """Up to ``limit`` points matching ``where``, in id order."""
        points = self._iter(self._read_name(), parse_where(where), None)
        return [p for p, _ in zip(points, range(limit), strict=False)]

    def _iter(self, name: str, where: Where | None,
              fields: Sequence[str] | None) -> Iterator[Point]:
        offset: Any = None
        while True:
            page, offset = self.backend.scroll(name, where, PAGE, offset, fields)
            yield from page
            if offset is None or not page:
                return

    def count(self, where: Where_ = None) -> int:
        return self.backend.count(self._read_name(), parse_where(where))

    def count_by_modality(self) -> dict[str, int]:
        return self.count_by("modality")

    def count_by(self, field: str) -> dict[str, int]:
        """Points per value of one indexed keyword field (``modality``, ``kind``,
        ``archive``, ...), values sorted."""
        if field not in GROUP_FIELDS:
            raise ValueError(f"count_by takes one of {GROUP_FIELDS}, got {field!r}")
        return dict(sorted(self.backend.facet(self._read_name(), field, None).items()))

    def list_items(self, archive: str | None = None) -> list[dict[str, Any]]:
        """One row per item: item_id, source_uri (all paths), kind, archive, modalities, n_points."""
        where = parse_where({"archive": archive}) if archive is not None else None
        fields = ["item_id", "source_uri", "kind", "archive", "modality"]
        rows: dict[str, dict[str, Any]] = {}
        for point in self._iter(self._read_name(), where, fields):
            _add_to_row(rows, point.payload)
        for row in rows.values():
            row["modalities"] = sorted(row["modalities"])
        return sorted(rows.values(), key=lambda r: r["item_id"])

    def live(self, where: Where | None) -> Where | None:
        """``where``, leaving out points of modality-extension versions that are no longer
        active (a retrained extension's old version): searches never mix two versions of
        one extension, and such points do not make an item complete."""
        stale = stale_versions(self.settings.home)
        if not stale:
            return where
        hide = Where(must_not=(any_of("extension_version", stale),))
        return hide if where is None else where.and_(hide)

    # --- deleting ------------------------------------------------------------------------

    def delete_stale_extension_points(self, archive: str) -> int:
        """Points of inactive extension versions from one source, once its run has written
        the active version's points; returns the number removed."""
        stale = stale_versions(self.settings.home)
        if not stale:
            return 0
        return self._delete(self._read_name(),
                            any_of("archive", [archive]).and_(any_of("extension_version", stale)))

    def delete_items(self, item_ids: Iterable[str]) -> int:
        """Delete every point of these items; returns the number of points removed."""
        name = self._read_name()
        removed = 0
        for chunk in _chunks(list(dict.fromkeys(item_ids)), ID_CHUNK):
            removed += self._delete(name, any_of("item_id", chunk))
        return removed

    def delete_where(self, where: Mapping[str, Any] | Where) -> int:
        parsed = parse_where(where)
        if parsed is None or (not parsed.must and not parsed.must_not):
            raise ValueError("delete_where needs a non-empty filter (it never deletes everything)")
        return self._delete(self._read_name(), parsed)

    def delete_source(self, archive_or_prefix: str) -> int:
        """Forget an archive, folder or URI prefix.

        Items seen only there are deleted; items whose bytes were also seen elsewhere
        keep their points and lose only these paths (their ``archive`` field keeps the
        first archive they were seen in). Returns the number of points removed.
        """
        name = self._read_name()
        where = parse_where({"source_uri": {"prefix": archive_or_prefix}})
        uris: dict[str, list[str]] = {}
        for point in self._iter(name, where, ["item_id", "source_uri"]):
            uris.setdefault(point.payload["item_id"], []).extend(
                _as_list(point.payload.get("source_uri")))
        gone = []
        for item_id, paths in uris.items():
            kept = [u for u in dict.fromkeys(paths) if not _under(u, archive_or_prefix)]
            if kept:
                self.retry(lambda i=item_id, k=kept: self.backend.set_payload(
                    name, any_of("item_id", [i]), {"source_uri": k}))
            elif paths:
                gone.append(item_id)
        return self.delete_items(gone)

    def _delete(self, name: str, where: Where) -> int:
        before = self.backend.count(name, where)
        self.retry(lambda: self.backend.delete(name, where))
        return before

    # --- upkeep --------------------------------------------------------------------------

    def optimize(self) -> None:
        """Build the HNSW index where the engine needs an explicit call (edge; blocking)."""
        names = {self._write_name()} if self._target else set()
        alias_target = self.backend.get_alias(self.alias)
        names |= {alias_target} if alias_target else set()
        for name in sorted(names):
            self.backend.optimize(name)

    def optimize_if_due(self) -> list[str]:
        """Build the index of the collections written and read (edge's HNSW) that hold
        at least ``settings.optimize_after_points`` points not yet indexed; the names
        built."""
        threshold = self.settings.optimize_after_points
        if not threshold:
            return []
        names = {self._write_name()} if self._target else set()
        names |= {n for n in (self.backend.get_alias(self.alias),) if n}
        due = sorted(n for n in names if self.backend.collection_exists(n)
                     and self.backend.unindexed_points(n) >= threshold)
        for name in due:
            log.info("building the vector index of %s", name)
            self.backend.optimize(name)
        return due

    def index_state(self) -> dict[str, Any] | None:
        """What the vector index of the collection searched covers (``Backend.index_state``)."""
        return self.backend.index_state(self._read_name())

    def close(self, *, optimize: bool = True) -> None:
        """Close the engine; first build the index when it pays (``optimize_if_due``),
        unless ``optimize=False`` (a run stopping in a hurry)."""
        try:
            if optimize:
                self.optimize_if_due()
        except Exception as exc:  # noqa: BLE001 - the index is an extra, the points are kept
            log.warning("the vector index was not built on close (%s); search stays exact "
                        "until a later close builds it", exc)
        finally:
            self.backend.close()

    def retry(self, call: Callable[[], T]) -> T:
        """Run one engine call, retrying the errors the backend calls transient (with
        backoff); the ledger's writes beside the points use it too."""
        for attempt in range(RETRY_ATTEMPTS):
            try:
                return call()
            except Exception as exc:
                if attempt == RETRY_ATTEMPTS - 1 or not self.backend.is_transient(exc):
                    raise
                time.sleep(RETRY_BASE_S * 2**attempt)
        raise AssertionError("unreachable")


def open_store(settings: Settings | None = None, *, backend: str | None = None) -> VectorStore:
    """The store configured by ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    kind = backend or settings.store_kind
    return VectorStore(open_backend(kind, settings), settings, kind)


@dataclass(frozen=True, slots=True)
class StoreOpener:
    """What another process needs to open a lent store (``VectorStore.lend``)."""

    settings: Settings  # with absolute paths: the borrower may run in another folder
    kind: str
    target: str  # the physical collection written
    host: str | None  # an embedded store's machine: its folder is on that machine's disk

    def __call__(self) -> VectorStore:
        if self.host is not None and socket.gethostname() != self.host:
            raise RuntimeError(
                f"the embedded store is on {self.host}, and this process runs on "
                f"{socket.gethostname()}: a Ray run writes an embedded store from the driver's "
                "machine (join the cluster with RAY_ADDRESS=host:port, not ray://), or use a "
                "Qdrant server (QDRANT_URL)")
        store = VectorStore(_reopened(self.kind, self.settings), self.settings, self.kind)
        store._target = self.target
        return store


LEND_WAIT_S = 30.0


def _absolute(settings: Settings) -> Settings:
    paths = {"home": settings.home.expanduser().resolve()}
    if settings.qdrant_path is not None:
        paths["qdrant_path"] = settings.qdrant_path.expanduser().resolve()
    return settings.model_copy(update=paths)


def _reopened(kind: str, settings: Settings) -> Backend:
    """The engine opened, waiting (a while) for the process it was lent to to let go:
    its folder lock goes with that process's last close or its exit."""
    deadline = time.monotonic() + LEND_WAIT_S
    while True:
        try:
            return open_backend(kind, settings)
        except StoreLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- small helpers ---------------------------------------------------------------------


def _with_exclusions(where: Where_, exclude: Iterable[str] | None) -> Where | None:
    parsed = parse_where(where)
    excluded = list(exclude or ())
    if not excluded:
        return parsed
    negation = Where(must_not=(any_of("item_id", excluded),))
    return negation if parsed is None else parsed.and_(negation)


def _group_hits(hits: Sequence[ScoredPoint], group_by: str, size: int) -> list[Group]:
    groups: dict[str, Group] = {}
    for hit in hits:  # best first, so each group's first hit is its best
        for key in _as_list(hit.payload.get(group_by)):
            group = groups.setdefault(str(key), Group(str(key), []))
            if len(group.hits) < size:
                group.hits.append(hit)
    return list(groups.values())


def _add_to_row(rows: dict[str, dict[str, Any]], payload: Mapping[str, Any]) -> None:
    row = rows.setdefault(payload["item_id"], {
        "item_id": payload["item_id"], "source_uri": [], "kind": payload.get("kind"),
        "archive": payload.get("archive"), "modalities": set(), "n_points": 0})
    row["source_uri"] = list(dict.fromkeys([*row["source_uri"],
                                            *_as_list(payload.get("source_uri"))]))
    row["modalities"].add(payload.get("modality"))
    row["n_points"] += 1


def _under(uri: str, prefix: str) -> bool:
    """Whether ``uri`` lies in the archive, folder or prefix (``/data/x`` is not ``/data/x2``)."""
    if uri == prefix or (prefix.endswith(("/", "!/")) and uri.startswith(prefix)):
        return True
    return uri.startswith((prefix + "/", prefix + "!/"))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _chunks(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
