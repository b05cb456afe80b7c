"""qdrant-client backend: embedded ``QdrantClient(path=...)`` here, a server in ``server.py``.

qdrant-client has collections, aliases (also in embedded mode: kept in its
``meta.json``) and collection metadata, so the collection's spec is stored as
collection metadata and the alias map is Qdrant's own. Embedded mode is brute
force in Python: payload indexes are created (so a collection copied to a
server is right) but have no effect there, and it warns above 20,000 points.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from schemas.payload import INDEXED_FIELDS
from schemas.settings import Settings
from search.backends import Backend, CollectionSpec, Group, Point, ScoredPoint
from search.backends.lock import DirLock
from search.filters import Where, to_client_filter

INDEX_TYPES: dict[str, Any] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "datetime": models.PayloadSchemaType.DATETIME,
}
INDEX_PARAMS: dict[str, Any] = {
    "source_uri": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, prefix=True),
}
FACET_LIMIT = 1_000_000


class ClientBackend(Backend):
    """Everything qdrant-client can do, the same for embedded and server mode."""

    native_groups = True

    def __init__(self, client: QdrantClient, name: str, where: str,
                 lock: DirLock | None = None) -> None:
        self.client = client
        self.name = name
        self._where = where  # a path or URL, for messages; never the API key
        self._lock = lock

    def __repr__(self) -> str:
        return f"ClientBackend({self.name}, {self._where!r})"

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        quantization = (models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=0.99)) if spec.quantization else None)
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=spec.dim, distance=models.Distance.COSINE,
                                               on_disk=spec.on_disk_vectors or None),
            quantization_config=quantization,
            metadata=spec.metadata(),
        )
        with warnings.catch_warnings():
            # embedded mode warns that payload indexes do nothing there; we know.
            warnings.simplefilter("ignore")
            for field, kind in INDEXED_FIELDS.items():
                schema = INDEX_PARAMS.get(field, INDEX_TYPES[kind])
                self.client.create_payload_index(name, field, field_schema=schema, wait=True)

    def collection_exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def collection_metadata(self, name: str) -> dict[str, Any]:
        return dict(self.client.get_collection(name).config.metadata or {})

    def drop_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a.alias_name for a in self.client.get_aliases().aliases
                      if a.collection_name == name)

    def get_alias(self, alias: str) -> str | None:
        for description in self.client.get_aliases().aliases:
            if description.alias_name == alias:
                return description.collection_name
        return None

    def set_alias(self, alias: str, physical: str) -> None:
        # delete + create in one request: Qdrant applies the list atomically.
        operations: list[Any] = [
            models.CreateAliasOperation(create_alias=models.CreateAlias(
                collection_name=physical, alias_name=alias))]
        if self.get_alias(alias) is not None:
            operations.insert(0, models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=alias)))
        self.client.update_collection_aliases(operations)

    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[dict[str, Any]]) -> None:
        batch = models.Batch(ids=list(ids), vectors=vectors.tolist(), payloads=list(payloads))
        self.client.upsert(name, points=batch, wait=True)

    def set_payload(self, name: str, where: Where, payload: dict[str, Any]) -> None:
        self.client.set_payload(name, payload=payload, points=models.FilterSelector(
            filter=to_client_filter(where)), wait=True)

    def delete(self, name: str, where: Where) -> None:
        self.client.delete(name, points_selector=models.FilterSelector(
            filter=to_client_filter(where)), wait=True)

    def query(self, name: str, vector: np.ndarray, where: Where | None, limit: int,
              offset: int) -> list[ScoredPoint]:
        response = self.client.query_points(name, query=vector.tolist(), limit=limit,
                                            offset=offset or None,
                                            query_filter=to_client_filter(where),
                                            with_payload=True)
        return [ScoredPoint(str(p.id), float(p.score), p.payload or {}) for p in response.points]

    def query_groups(self, name: str, vector: np.ndarray, where: Where | None, group_by: str,
                     limit: int, group_size: int) -> list[Group]:
        response = self.client.query_points_groups(
            name, group_by=group_by, query=vector.tolist(), query_filter=to_client_filter(where),
            limit=limit, group_size=group_size, with_payload=True)
        return [Group(str(g.id), [ScoredPoint(str(p.id), float(p.score), p.payload or {})
                                  for p in g.hits]) for g in response.groups]

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool) -> list[Point]:
        records = self.client.retrieve(name, ids=list(ids), with_payload=True,
                                       with_vectors=with_vectors)
        return [_to_point(r, with_vectors) for r in records]

    def scroll(self, name: str, where: Where | None, limit: int, offset: Any,
               fields: Sequence[str] | None) -> tuple[list[Point], Any]:
        with_payload: Any = True if fields is None else list(fields)
        records, next_offset = self.client.scroll(
            name, scroll_filter=to_client_filter(where), limit=limit, offset=offset,
            with_payload=with_payload, with_vectors=False)
        return [_to_point(r, False) for r in records], next_offset

    def count(self, name: str, where: Where | None) -> int:
        return self.client.count(name, count_filter=to_client_filter(where), exact=True).count

    def facet(self, name: str, key: str, where: Where | None) -> dict[Any, int]:
        response = self.client.facet(name, key=key, facet_filter=to_client_filter(where),
                                     limit=FACET_LIMIT, exact=True)
        return {hit.value: hit.count for hit in response.hits}

    def optimize(self, name: str) -> None:
        """Nothing to do: a server indexes in the background, embedded mode never does."""

    def close(self) -> None:
        self.client.close()
        if self._lock is not None:
            self._lock.release()


def _to_point(record: Any, with_vector: bool) -> Point:
    vector = np.asarray(record.vector, dtype=np.float32) if with_vector else None
    return Point(str(record.id), record.payload or {}, vector)


def open_local(settings: Settings) -> ClientBackend:
    root: Path = settings.qdrant_dir / "local"
    lock = DirLock(root)
    try:
        client = QdrantClient(path=str(root))
    except Exception:
        lock.release()
        raise
    return ClientBackend(client, "local", str(root), lock)
