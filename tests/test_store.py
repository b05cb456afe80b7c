"""Congruence tests: the same behaviour from every store backend (edge, local, server).

The server runs only when QDRANT_URL is set; otherwise it is reported as skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from qdrant_client import models
from store_helpers import (
    BACKEND_PARAMS,
    DIM,
    POLICY,
    SERVER_MODELS,
    at_cosine,
    basis,
    file_level,
    model_for,
    random_unit,
    record,
    settings_for,
)

from schemas import EmbeddingRecord, PointSink, collection_name
from search.store import VectorStore, open_store


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, tmp_path) -> Iterator[VectorStore]:
    st = open_store(settings_for(backend, tmp_path))
    yield st
    _drop_server_collections(st)
    st.close()


def _drop_server_collections(st: VectorStore) -> None:
    """A server outlives the test: remove what this test created there."""
    if st.backend.name != "server":
        return
    client = st.backend.client  # type: ignore[attr-defined]
    if st.backend.get_alias(st.alias):
        client.update_collection_aliases([models.DeleteAliasOperation(
            delete_alias=models.DeleteAlias(alias_name=st.alias))])
    while SERVER_MODELS:
        name = collection_name(SERVER_MODELS.pop(), POLICY)
        if client.collection_exists(name):
            client.delete_collection(name)


@pytest.fixture
def model(store: VectorStore, backend: str) -> str:
    model_id = model_for(backend)
    store.ensure_collection(model_id, POLICY)
    return model_id


def test_store_is_a_point_sink(store: VectorStore) -> None:
    assert isinstance(store, PointSink)


def test_ensure_collection_names_records_and_aliases(store: VectorStore, model: str) -> None:
    info = store.collection_info()
    assert info["physical"] == collection_name(model, POLICY)
    assert (info["model_id"], info["policy"], info["dim"]) == (model, POLICY.policy_id, DIM)
    assert info["points"] == 0
    assert store.ensure_collection(model, POLICY) == info["physical"]  # second call: no-op


def test_upsert_is_idempotent(store: VectorStore, model: str) -> None:
    rng = np.random.default_rng(0)
    records = [record(f"i{n}", n, random_unit(rng), model_id=model) for n in range(7)]
    store.write(records)
    store.write(records)
    assert store.count() == 7


def test_search_orders_by_cosine(store: VectorStore, model: str) -> None:
    cosines = [0.1, 0.9, 0.5, -0.3]
    store.write([record(f"i{k}", 0, at_cosine(c, k + 1), model_id=model)
                 for k, c in enumerate(cosines)])
    hits = store.search(basis(0), limit=4)
    assert [h.payload["item_id"] for h in hits] == ["i1", "i2", "i0", "i3"]
    assert np.allclose([h.score for h in hits], sorted(cosines, reverse=True), atol=1e-3)


def test_filters_select_the_right_points(store: VectorStore, model: str) -> None:
    rows = [("a", "audio", "audio", 5.0, "A", "2026-01-01"),
            ("b", "vision", "video", 15.0, "B", "2026-02-01"),
            ("c", "audio", "video", 30.0, "A", "2026-03-01"),
            ("d", "text", "text", None, "B", "2026-04-01")]
    store.write([record(item, 0, at_cosine(0.5, k + 1), model_id=model, modality=mod, kind=kind,
                        start_s=start, meta={"camera": cam}, ingested_at=f"{day}T00:00:00+00:00")
                 for k, (item, mod, kind, start, cam, day) in enumerate(rows)])

    def items(where: dict) -> set[str]:
        return {h.payload["item_id"] for h in store.search(basis(0), where=where, limit=10)}

    assert items({"modality": "audio"}) == {"a", "c"}
    assert items({"kind": ["video", "text"]}) == {"b", "c", "d"}
    assert items({"start_s": {"gte": 10, "lt": 30}}) == {"b"}
    assert items({"meta.camera": "A", "kind": "video"}) == {"c"}
    assert items({"ingested_at": {"gte": "2026-02-15"}}) == {"c", "d"}
    assert items({"not": {"modality": "audio"}}) == {"b", "d"}
    assert store.count({"modality": ["audio", "text"]}) == 3


def test_unknown_filter_field_names_the_allowed_ones(store: VectorStore, model: str) -> None:
    with pytest.raises(ValueError, match="unknown filter field 'modalty'.*modality"):
        store.search(basis(0), where={"modalty": "audio"})


def test_groups_by_item_best_segment_first(store: VectorStore, model: str) -> None:
    store.write([
        record("A", 0, at_cosine(0.3, 1), model_id=model),
        record("A", 1, at_cosine(0.9, 2), model_id=model),
        record("A", 2, at_cosine(0.8, 3), model_id=model),
        record("B", 0, at_cosine(0.85, 4), model_id=model),
        record("C", 0, at_cosine(0.1, 5), model_id=model),
    ])
    groups = store.search_groups(basis(0), limit=2, group_size=2)
    assert [g.key for g in groups] == ["A", "B"]
    assert [h.payload["segment_index"] for h in groups[0].hits] == [1, 2]
    assert len(groups[1].hits) == 1


def test_offset_pages_through_results(store: VectorStore, model: str) -> None:
    store.write([record(f"i{k}", 0, at_cosine(1.0 - k / 10, k + 1), model_id=model)
                 for k in range(6)])
    every = [h.id for h in store.search(basis(0), limit=6)]
    assert [h.id for h in store.search(basis(0), limit=2, offset=2)] == every[2:4]
    assert store.search(basis(0), exclude=["i0", "i1"], limit=1)[0].payload["item_id"] == "i2"


def test_delete_by_item_and_by_source(store: VectorStore, model: str) -> None:
    rng = np.random.default_rng(1)
    store.write([record("x", 0, random_unit(rng), model_id=model, archive="/data/a"),
                 record("x", 1, random_unit(rng), model_id=model, archive="/data/a"),
                 record("y", 0, random_unit(rng), model_id=model, archive="/data/a2"),
                 record("z", 0, random_unit(rng), model_id=model, archive="/data/b",
                        uris=["/data/b/z", "/data/a/z-copy"])])
    assert store.delete_items(["x"]) == 2
    assert store.count() == 2
    # /data/a is not /data/a2; z is also in /data/b, so it stays and loses the /data/a path
    assert store.delete_source("/data/a") == 0
    rows = {r["item_id"]: r for r in store.list_items()}
    assert set(rows) == {"y", "z"} and rows["z"]["source_uri"] == ["/data/b/z"]
    assert store.delete_source("/data/b") == 1
    assert store.delete_where({"archive": "/data/a2"}) == 1
    assert store.count() == 0


def test_delete_where_refuses_an_empty_filter(store: VectorStore, model: str) -> None:
    with pytest.raises(ValueError, match="non-empty filter"):
        store.delete_where({})


def test_list_items_and_counts_per_modality(store: VectorStore, model: str) -> None:
    rng = np.random.default_rng(2)
    store.write([record("v", 0, random_unit(rng), model_id=model, modality="vision", kind="video"),
                 record("v", 0, random_unit(rng), model_id=model, modality="audio", kind="video"),
                 record("v", 1, random_unit(rng), model_id=model, modality="audio", kind="video"),
                 record("t", 0, random_unit(rng), model_id=model, modality="text", kind="text",
                        archive="/data/other")])
    rows = store.list_items()
    assert [(r["item_id"], r["kind"], r["modalities"], r["n_points"]) for r in rows] == [
        ("t", "text", ["text"], 1), ("v", "video", ["audio", "vision"], 3)]
    assert [r["item_id"] for r in store.list_items(archive="/data/other")] == ["t"]
    assert store.count_by_modality() == {"audio": 2, "text": 1, "vision": 1}


def test_completed_items_need_the_file_level_point_or_the_whole_one(store: VectorStore,
                                                                     model: str) -> None:
    rng = np.random.default_rng(3)
    whole = record("photo", 0, random_unit(rng), model_id=model)
    store.write([record("done", 0, random_unit(rng), model_id=model),
                 file_level("done", random_unit(rng), model_id=model),
                 record("half", 0, random_unit(rng), model_id=model),
                 EmbeddingRecord(whole.point_id, whole.vector, whole.payload | {"whole": 1})])
    assert store.completed_items(["done", "half", "photo", "never"]) == {"done", "photo"}
    assert store.completed_items([]) == set()
    store.add_locations("photo", ["/elsewhere/photo"])  # read from its one point
    assert store.retrieve([whole.point_id])[0].payload["source_uri"] == [
        "/data/a/photo", "/elsewhere/photo"]


def test_add_locations_unions_paths_on_every_point(store: VectorStore, model: str) -> None:
    rng = np.random.default_rng(4)
    store.write([record("x", k, random_unit(rng), model_id=model, uris=["/a/x"]) for k in range(3)])
    store.add_locations("x", ["/b/x", "/a/x"])
    store.add_locations("x", ["/c/x"])
    uris = {tuple(p.payload["source_uri"]) for p in store.scroll({"item_id": "x"})}
    assert uris == {("/a/x", "/b/x", "/c/x")}


def test_alias_swap_is_blue_green(store: VectorStore, backend: str, model: str) -> None:
    blue = store.collection_info()["physical"]
    store.write([record("old", 0, at_cosine(0.9, 1), model_id=model)])
    new_model = model_for(backend, "m2")
    green = store.ensure_collection(new_model, POLICY)
    store.write([record("new", 0, at_cosine(0.9, 2), model_id=new_model)])
    assert store.search(basis(0), limit=5)[0].payload["item_id"] == "old"  # alias: still blue
    assert store.swap_alias(green) == blue
    assert [h.payload["item_id"] for h in store.search(basis(0), limit=5)] == ["new"]
    assert store.collection_info()["model_id"] == new_model
    with pytest.raises(ValueError, match="not comparable"):
        store.search(basis(0), model_id=model)


def test_only_a_collection_no_alias_uses_can_be_dropped(store: VectorStore, backend: str,
                                                        model: str) -> None:
    blue = store.collection_info()["physical"]
    store.write([record("old", 0, at_cosine(0.9, 1), model_id=model)])
    green = store.ensure_collection(model_for(backend, "m2"), POLICY)
    with pytest.raises(ValueError, match="in use"):
        store.drop_collection(blue)  # the alias still points at it
    store.swap_alias(green)
    with pytest.raises(ValueError, match="in use"):
        store.drop_collection(green)  # the alias and this store's writes use it
    store.drop_collection(blue)
    assert not store.backend.collection_exists(blue)
    assert store.count() == 0  # green, behind the alias, is untouched (and empty)
    with pytest.raises(ValueError, match="no collection"):
        store.drop_collection(blue)


def test_ensuring_another_collection_never_moves_a_set_alias(store: VectorStore, backend: str,
                                                             model: str) -> None:
    first = store.collection_info()["physical"]  # empty: e.g. every item was pruned
    store.ensure_collection(model_for(backend, "m2"), POLICY)
    assert store.collection_info()["physical"] == first


def test_swap_to_a_missing_collection_is_refused(store: VectorStore, model: str) -> None:
    with pytest.raises(ValueError, match="no collection"):
        store.swap_alias("mediabind__nope__w2s2c3")


def test_reopen_after_close_keeps_data(backend: str, tmp_path) -> None:
    settings = settings_for(backend, tmp_path)
    model_id = model_for(backend)
    rng = np.random.default_rng(5)
    with open_store(settings) as st:
        st.ensure_collection(model_id, POLICY)
        st.write([record(f"i{k}", 0, random_unit(rng), model_id=model_id) for k in range(5)])
    with open_store(settings) as st:
        assert st.count() == 5
        assert st.collection_info()["model_id"] == model_id
        _drop_server_collections(st)


@pytest.mark.parametrize("bad, message", [
    (np.ones(DIM - 1, dtype=np.float32), "shape"),
    (np.full(DIM, np.nan, dtype=np.float32), "NaN"),
    (np.zeros(DIM, dtype=np.float32), "all zeros"),
    (np.full(DIM, 1.0, dtype=np.float32), "L2-normalised"),
])
def test_bad_vector_is_refused_before_anything_is_written(store: VectorStore, model: str,
                                                          bad, message) -> None:
    good = [record(f"g{k}", 0, at_cosine(0.5, k + 1), model_id=model) for k in range(3)]
    with pytest.raises(ValueError, match=message):
        store.write([*good, record("bad", 0, bad, model_id=model)])
    assert store.count() == 0


def test_bad_payload_is_refused(store: VectorStore, model: str) -> None:
    rec = record("x", 0, basis(1), model_id=model)
    with pytest.raises(ValueError, match="unknown payload fields"):
        store.write([type(rec)(rec.point_id, rec.vector, {**rec.payload, "colour": "red"})])
    with pytest.raises(ValueError, match="model_id"):
        store.write([record("x", 0, basis(1), model_id="another-model")])
    with pytest.raises(ValueError, match="shape"):
        store.search(np.ones(3))
    assert store.count() == 0
