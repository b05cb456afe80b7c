"""Shared pieces of the store tests: settings per backend and records on known vectors."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import EmbeddingRecord, SegmentPolicy, Settings, point_id
from schemas.payload import FILE_LEVEL_INDEX

DIM = 1024
POLICY = SegmentPolicy()
NO_SERVER = not os.environ.get("QDRANT_URL")

BACKEND_PARAMS = [
    pytest.param("edge", id="edge"),
    pytest.param("local", id="local"),
    pytest.param("server", id="server", marks=[
        pytest.mark.server, pytest.mark.skipif(NO_SERVER, reason="QDRANT_URL not set")]),
]
EMBEDDED_PARAMS = BACKEND_PARAMS[:2]


def settings_for(backend: str, home: Path, **overrides: Any) -> Settings:
    # A server is shared: give each test its own alias so tests never see each other.
    alias = f"mb_test_{uuid.uuid4().hex[:10]}" if backend == "server" else "mediabind"
    return Settings(home=home, store=backend, collection=alias, **overrides)


SERVER_MODELS: list[str] = []  # model ids whose collections a test made on a server


def model_for(backend: str, name: str = "m1") -> str:
    """A model id; unique per test on a shared server (its collections are dropped after)."""
    if backend != "server":
        return name
    model_id = f"{name}-{uuid.uuid4().hex[:8]}"
    SERVER_MODELS.append(model_id)
    return model_id


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def basis(k: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[k] = 1.0
    return vector


def at_cosine(cos: float, k: int) -> np.ndarray:
    """A unit vector whose cosine with basis(0) is ``cos`` (the rest along axis k)."""
    return unit(cos * basis(0) + np.sqrt(1.0 - cos**2) * basis(k))


def record(item_id: str, index: int, vector: np.ndarray, *, model_id: str = "m1",
           modality: str = "vision", kind: str = "image", start_s: float | None = None,
           archive: str = "/data/a", uris: list[str] | None = None,
           meta: dict[str, Any] | None = None,
           ingested_at: str = "2026-01-10T00:00:00+00:00") -> EmbeddingRecord:
    payload = {
        "item_id": item_id, "source_uri": uris or [f"{archive}/{item_id}"],
        "archive": archive, "member": item_id, "kind": kind, "modality": modality,
        "segment_index": index, "start_s": start_s, "end_s": None, "model_id": model_id,
        "policy": POLICY.policy_id, "ingested_at": ingested_at, "run_id": "r1",
        "meta": meta or {},
    }
    return EmbeddingRecord(point_id(item_id, modality, index, POLICY, model_id), vector, payload)


def file_level(item_id: str, vector: np.ndarray, **kw: Any) -> EmbeddingRecord:
    return record(item_id, FILE_LEVEL_INDEX, vector, **kw)


def random_unit(rng: np.random.Generator) -> np.ndarray:
    return unit(rng.normal(size=DIM).astype(np.float32))
