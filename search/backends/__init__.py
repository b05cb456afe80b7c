"""The engines behind ``search.store.VectorStore``: one small primitive interface.

Each backend does only what its engine must do differently (collections,
aliases, filter objects, ids); everything else (validation, batching, retries,
grouping without native support, item listings) lives once in the store.

- ``edge``: qdrant-edge-py, Qdrant's Rust engine in process (default embedded).
- ``local``: qdrant-client's embedded mode, ``QdrantClient(path=...)`` (brute force in Python).
- ``server``: qdrant-client against a Qdrant server (url, api key, TLS, gRPC).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.settings import Settings
from search.filters import Where


@dataclass(frozen=True, slots=True)
class ScoredPoint:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """Hits of one source file (or other group key), best first."""

    key: str
    hits: list[ScoredPoint] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.hits[0].score if self.hits else float("-inf")


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """What a physical collection is made of; recorded next to it."""

    dim: int
    model_id: str
    policy: str
    quantization: bool = False
    on_disk_vectors: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"dim": self.dim, "model_id": self.model_id, "policy": self.policy}


class Backend(ABC):
    """Primitive operations on physical collections (never aliases, except the alias map)."""

    name: str
    native_groups: bool = False
    one_process: bool = True  # an embedded engine: its folder admits one process at a time

    @abstractmethod
    def create_collection(self, name: str, spec: CollectionSpec) -> None: ...

    @abstractmethod
    def collection_exists(self, name: str) -> bool: ...

    @abstractmethod
    def collection_metadata(self, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a physical collection and its points (callers check no alias uses it)."""

    @abstractmethod
    def aliases_of(self, name: str) -> list[str]:
        """Every alias that points at ``name``."""

    @abstractmethod
    def get_alias(self, alias: str) -> str | None: ...

    @abstractmethod
    def set_alias(self, alias: str, physical: str) -> None:
        """Point ``alias`` at ``physical`` in one atomic step."""

    @abstractmethod
    def upsert(self, name: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[dict[str, Any]]) -> None: ...

    @abstractmethod
    def set_payload(self, name: str, where: Where, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def delete(self, name: str, where: Where) -> None: ...

    @abstractmethod
    def query(self, name: str, vector: np.ndarray, where: Where | None, limit: int,
              offset: int) -> list[ScoredPoint]: ...

    def query_groups(self, name: str, vector: np.ndarray, where: Where | None, group_by: str,
                     limit: int, group_size: int) -> list[Group]:
        raise NotImplementedError(f"{self.name} has no native grouping")

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool) -> list[Point]: ...

    @abstractmethod
    def scroll(self, name: str, where: Where | None, limit: int, offset: Any,
               fields: Sequence[str] | None) -> tuple[list[Point], Any]:
        """One page; ``fields`` selects payload keys (None: all). Returns (points, next offset)."""

    @abstractmethod
    def count(self, name: str, where: Where | None) -> int: ...

    @abstractmethod
    def facet(self, name: str, key: str, where: Where | None) -> dict[Any, int]:
        """Exact point counts per value of an indexed keyword field."""

    @abstractmethod
    def optimize(self, name: str) -> None:
        """Build indexes where the engine needs an explicit call (blocking)."""

    def unindexed_points(self, name: str) -> int:
        """Points an explicit ``optimize`` would index (0: the engine indexes by itself,
        or never)."""
        return 0

    def index_state(self, name: str) -> dict[str, Any] | None:
        """What the engine's vector index covers: ``indexed`` and ``points`` counts and
        ``built_at`` (ISO time of the last explicit build); None where the engine keeps
        its own index and says nothing of it."""
        return None

    def is_transient(self, exc: BaseException) -> bool:
        """Whether retrying the same call may succeed (network blips, overload)."""
        return isinstance(exc, ConnectionError | TimeoutError)

    @abstractmethod
    def close(self) -> None: ...


# name -> "module:function(settings) -> Backend"; imported lazily so that the
# edge engine is not loaded by a process that talks to a server.
BACKENDS: dict[str, str] = {
    "edge": "search.backends.edge:open_edge",
    "local": "search.backends.local:open_local",
    "server": "search.backends.server:open_server",
}


def open_backend(kind: str, settings: Settings) -> Backend:
    if kind not in BACKENDS:
        raise ValueError(f"unknown store backend {kind!r}; choose one of {sorted(BACKENDS)}")
    module, func = BACKENDS[kind].split(":")
    factory: Callable[[Settings], Backend] = getattr(importlib.import_module(module), func)
    backend = factory(settings)
    if not backend.one_process:
        return backend
    from search.backends.serial import Serialised

    return Serialised(backend)  # type: ignore[return-value]  # the same methods, one at a time
