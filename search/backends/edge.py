"""qdrant-edge-py backend: Qdrant's Rust engine inside this process.

qdrant-edge has one ``EdgeShard`` per folder and no collections or aliases, so:

- a physical collection is the folder ``<root>/collections/<name>/``;
- the alias map and each collection's spec (dim, model_id, policy) live in
  ``<root>/catalog.json``, rewritten atomically (temp file + rename), so a
  crash leaves either the old or the new map, never half of one;
- a ``DirLock`` on ``<root>`` keeps a second process out with a clear error;
- writes are refused with ``StoreDiskFullError`` (ENOSPC) while the disk has less
  free space than a safe margin: the engine writes through memory-mapped sparse
  files, and a page it touches on a full disk kills the process with SIGBUS
  instead of raising, which would leave no report behind.

HNSW is built only by ``optimize()`` (blocking); before that, search is exact,
which is fast enough for small collections (about 20 ms at 100k x 1024-d).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from schemas.payload import INDEXED_FIELDS
from schemas.settings import Settings
from search.backends import Backend, CollectionSpec, Point, ScoredPoint
from search.backends.lock import DirLock
from search.filters import Where, to_edge_filter

INDEX_TYPES: dict[str, Any] = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "datetime": qe.PayloadSchemaType.Datetime,
}
# source_uri is filtered by prefix (delete_source): give its index the prefix option.
INDEX_PARAMS: dict[str, Any] = {"source_uri": qe.KeywordIndexParams(prefix=True)}
FACET_LIMIT = 1_000_000  # facets are used on low-cardinality fields (modality, item_id chunks)
# Free bytes kept in reserve on the store's disk: a new collection touches ~2 MB at once,
# and the engine grows its WAL and segment files in steps of a few MB.
MIN_FREE_BYTES = 64 * 2**20
WRITE_AMPLIFICATION = 4  # WAL + vector storage + payload + indexes, per byte of a point


class StoreDiskFullError(OSError):
    """The embedded store's disk is (nearly) full; nothing of the refused write was stored."""


class EdgeBackend(Backend):
    name = "edge"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = DirLock(root)
        self._catalog_path = root / "catalog.json"
        self._catalog = self._read_catalog()
        self._shards: dict[str, qe.EdgeShard] = {}

    def __repr__(self) -> str:
        return f"EdgeBackend(root={str(self.root)!r})"

    # --- catalog: aliases and collection specs ------------------------------------------

    def _read_catalog(self) -> dict[str, dict[str, Any]]:
        if not self._catalog_path.exists():
            return {"aliases": {}, "collections": {}}
        return json.loads(self._catalog_path.read_text())

    def _write_catalog(self, catalog: dict[str, dict[str, Any]]) -> None:
        tmp = self._catalog_path.with_suffix(".json.tmp")
        with open(tmp, "w") as fh:
            json.dump(catalog, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._catalog_path)  # atomic on POSIX
        self._catalog = catalog

    def _folder(self, name: str) -> Path:
        return self.root / "collections" / name

    def _check_space(self, incoming_bytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        needed = MIN_FREE_BYTES + WRITE_AMPLIFICATION * incoming_bytes
        if free < needed:
            raise StoreDiskFullError(
                errno.ENOSPC, f"no space left for the embedded store at {self.root}: "
                f"{free / 2**20:.1f} MiB free, a write needs at least {needed / 2**20:.1f} MiB; "
                "points stored so far are kept: free space (or move MEDIABIND_HOME) and run "
                "again to store the rest")

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        self._check_space(0)
        folder, config = self._folder(name), _edge_config(spec)
        # A folder without a catalog entry is a creation cut short before the catalog
        # was written: adopt it (load checks the config) rather than fail forever.
        exists = (folder / "wal").exists()
        shard = qe.EdgeShard.load(str(folder), config) if exists else qe.EdgeShard.create(
            str(folder), config)
        for field, kind in INDEXED_FIELDS.items():
            schema = INDEX_PARAMS.get(field, INDEX_TYPES[kind])
            shard.update(qe.UpdateOperation.create_field_index(field, schema))
        self._shards[name] = shard
        catalog = json.loads(json.dumps(self._catalog))
        catalog["collections"][name] = spec.metadata()
        self._write_catalog(catalog)

    def collection_exists(self, name: str) -> bool:
        return name in self._catalog["collections"]

    def collection_metadata(self, name: str) -> dict[str, Any]:
        return dict(self._catalog["collections"][name])

    def drop_collection(self, name: str) -> None:
        # The folder is renamed to a tombstone first (atomic), so a crash at any point
        # leaves no folder under the collection's name for create_collection to adopt
        # (which would bring the dropped points back); then the catalog, then the data.
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        folder = self._folder(name)
        tombstone = folder.with_name(f".dropped-{name}-{uuid.uuid4().hex[:8]}")
        if folder.exists():
            folder.rename(tombstone)
        catalog = json.loads(json.dumps(self._catalog))
        catalog["collections"].pop(name, None)
        self._write_catalog(catalog)
        shutil.rmtree(tombstone, ignore_errors=True)  # a leftover tombstone is only disk

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, target in self._catalog["aliases"].items() if target == name)

    def get_alias(self, alias: str) -> str | None:
        return self._catalog["aliases"].get(alias)

    def set_alias(self, alias: str, physical: str) -> None:
        catalog = json.loads(json.dumps(self._catalog))
        catalog["aliases"][alias] = physical
        self._write_catalog(catalog)

    def _shard(self, name: str) -> qe.EdgeShard:
        if name not in self._shards:
            if not self.collection_exists(name):
                raise KeyError(f"no collection {name!r} in {self.root}")
            self._check_space(0)  # loading maps (and may extend) files: even reads can fault
            self._shards[name] = qe.EdgeShard.load(str(self._folder(name)))
        return self._shards[name]

    # --- points --------------------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[dict[str, Any]]) -> None:
        self._check_space(vectors.nbytes + len(json.dumps(list(payloads), default=str)))
        points = [qe.Point(pid, vec.tolist(), payload)
                  for pid, vec, payload in zip(ids, vectors, payloads, strict=True)]
        self._shard(name).update(qe.UpdateOperation.upsert_points(points))

    def set_payload(self, name: str, where: Where, payload: dict[str, Any]) -> None:
        self._check_space(len(json.dumps(payload, default=str)))
        op = qe.UpdateOperation.set_payload_by_filter(to_edge_filter(where), payload)
        self._shard(name).update(op)

    def delete(self, name: str, where: Where) -> None:
        op = qe.UpdateOperation.delete_points_by_filter(to_edge_filter(where))
        self._shard(name).update(op)

    def query(self, name: str, vector: np.ndarray, where: Where | None, limit: int,
              offset: int) -> list[ScoredPoint]:
        request = qe.QueryRequest(limit=limit, offset=offset or None,
                                  query=qe.Query.Nearest(vector.tolist()),
                                  filter=to_edge_filter(where), with_payload=True)
        return [ScoredPoint(str(p.id), float(p.score), p.payload or {})
                for p in self._shard(name).query(request)]

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool) -> list[Point]:
        records = self._shard(name).retrieve([uuid.UUID(i) for i in ids], with_payload=True,
                                             with_vector=with_vectors)
        return [_to_point(r, with_vectors) for r in records]

    def scroll(self, name: str, where: Where | None, limit: int, offset: Any,
               fields: Sequence[str] | None) -> tuple[list[Point], Any]:
        with_payload = True if fields is None else qe.PayloadSelector.Include(list(fields))
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=to_edge_filter(where),
                                   with_payload=with_payload, with_vector=False)
        records, next_offset = self._shard(name).scroll(request)
        return [_to_point(r, False) for r in records], next_offset

    def count(self, name: str, where: Where | None) -> int:
        return self._shard(name).count(qe.CountRequest(exact=True, filter=to_edge_filter(where)))

    def facet(self, name: str, key: str, where: Where | None) -> dict[Any, int]:
        request = qe.FacetRequest(key, limit=FACET_LIMIT, exact=True,
                                  filter=to_edge_filter(where))
        return {hit.value: hit.count for hit in self._shard(name).facet(request)}

    def optimize(self, name: str) -> None:
        self._shard(name).optimize()
        catalog = json.loads(json.dumps(self._catalog))
        catalog["collections"][name]["index_built_at"] = datetime.now(UTC).isoformat()
        self._write_catalog(catalog)

    def indexed_vectors(self, name: str) -> int:
        return self._shard(name).info().indexed_vectors_count

    def unindexed_points(self, name: str) -> int:
        info = self._shard(name).info()
        return max(0, info.points_count - info.indexed_vectors_count)

    def index_state(self, name: str) -> dict[str, Any] | None:
        info = self._shard(name).info()
        return {"indexed": info.indexed_vectors_count, "points": info.points_count,
                "built_at": self._catalog["collections"][name].get("index_built_at")}

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._lock.release()


def _edge_config(spec: CollectionSpec) -> qe.EdgeConfig:
    memory = qe.Memory.Cold if spec.on_disk_vectors else None
    vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine, memory=memory)
    quantization = (qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99)
                    if spec.quantization else None)
    return qe.EdgeConfig(vectors=vectors, quantization_config=quantization)


def _to_point(record: Any, with_vector: bool) -> Point:
    vector = np.asarray(record.vector, dtype=np.float32) if with_vector else None
    return Point(str(record.id), record.payload or {}, vector)


def open_edge(settings: Settings) -> EdgeBackend:
    return EdgeBackend(settings.qdrant_dir / "edge")
