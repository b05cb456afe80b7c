"""Hostile query input to ``MediaSearch``: each gives one clear ValueError/TypeError
(FileNotFoundError for a path that is not there) and nothing else: the store is
unchanged, no temporary file is left, and the client still answers afterwards.
Each case records the error it got and how long the refusal took."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embed_workers.encoder import Encoder
from embed_workers.executors import preset_model_id
from schemas import EmbeddingRecord, Kind, MediaItem, Modality, Segment, Settings, point_id
from schemas.payload import build_payload
from search import MediaSearch
from search.store import open_store

PRESET = "imagebind_tiny"
CAP = 64 << 10  # max_query_bytes, lowered so oversized inputs stay cheap
ERRORS = (ValueError, TypeError, FileNotFoundError)

pytestmark = [pytest.mark.timeout(300)]


def _records(settings: Settings, model_id: str, count: int = 6) -> list[EmbeddingRecord]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        item = MediaItem(hashlib.sha256(f"f{i}".encode()).hexdigest(), "/a", f"f{i}.txt", 5,
                         Kind.TEXT)
        seg = Segment(item.item_id, Modality.TEXT, Kind.TEXT, 0, None, None, f"text {i}")
        vector = rng.normal(size=1024).astype(np.float32)
        payload = build_payload(item, seg, model_id=model_id, policy=settings.policy,
                                run_id="hostile")
        pid = point_id(item.item_id, Modality.TEXT, 0, settings.policy, model_id)
        records.append(EmbeddingRecord(pid, vector / np.linalg.norm(vector), payload))
    return records


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("query-tempfiles")
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    yield folder
    tempfile.tempdir = saved


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, private_tmp: Path):
    settings = Settings(home=tmp_path_factory.mktemp("home"), store="edge", preset=PRESET,
                        device="cpu", dtype="float32", max_query_bytes=CAP)
    model_id = preset_model_id(PRESET)
    with open_store(settings) as store:
        store.ensure_collection(model_id, settings.policy)
        store.write(_records(settings, model_id))
        yield MediaSearch(settings, store=store, encoder=Encoder(PRESET, settings=settings))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("query-files")
    big = root / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(CAP + 1))
    garbage = root / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + bytes(300))
    text = root / "notes.txt"
    text.write_text("a text file, not a picture")
    return {"big": big, "garbage": garbage, "text": text, "missing": root / "nope.png"}


VECTOR_OK = np.eye(1024, dtype=np.float32)[0]

# (id, keyword arguments of search) -> each must raise one of ERRORS.
HOSTILE: dict[str, dict[str, Any] | Any] = {
    # oversized uploads
    "bytes_over_cap": {"image": b"\xff\xd8\xff" + bytes(CAP)},
    "text_over_cap": {"text": "word " * (CAP // 4)},
    "file_over_cap": {"image": "@big"},
    "array_over_cap": {"audio": np.zeros(CAP // 4 + 1, np.float32)},
    # wrong types
    "text_int": {"text": 123},
    "image_int": {"image": 123},
    "image_dict": {"image": {"a": 1}},
    "image_list_mixed": {"image": [b"\xff\xd8\xff", 5]},
    "nothing": {"text": None, "image": None},
    "empty_list": {"text": []},
    "vector_str": {"vector": "abc"},
    "vector_dict": {"vector": {"x": 1.0}},
    "vector_mixed": {"vector": [1.0, "a"] + [0.0] * 1022},
    "image_array_2d": {"image": np.zeros((10, 10), np.uint8)},
    "image_array_float": {"image": np.zeros((4, 4, 3), np.float32)},
    "text_array": {"text": np.zeros(3, np.float32)},
    "limit_negative": {"vector": VECTOR_OK, "limit": -1},
    "limit_str": {"vector": VECTOR_OK, "limit": "10"},
    "offset_bool": {"vector": VECTOR_OK, "offset": True},
    "moments_zero": {"vector": VECTOR_OK, "moments": 0},
    # bad vectors
    "vector_nan": {"vector": np.full(1024, np.nan, np.float32)},
    "vector_inf": {"vector": np.r_[np.inf, np.zeros(1023)]},
    "vector_zero": {"vector": np.zeros(1024)},
    "vector_wrong_dim": {"vector": np.ones(512)},
    "vector_matrix": {"vector": np.ones((2, 1024))},
    "audio_nan": {"audio": np.full(32000, np.nan, np.float32)},
    "thermal_inf": {"thermal": np.full((8, 8), np.inf, np.float32)},
    # filters
    "filter_unknown_field": {"vector": VECTOR_OK, "where": {"nope": 1}},
    "filter_meta_bare": {"vector": VECTOR_OK, "where": {"meta.": 1}},
    "filter_bad_op": {"vector": VECTOR_OK, "where": {"start_s": {"between": [1, 2]}}},
    "filter_bad_date": {"vector": VECTOR_OK, "where": {"ingested_at": {"gte": "yesterday"}}},
    "filter_float_match": {"vector": VECTOR_OK, "where": {"segment_index": 1.5}},
    "filter_string": {"vector": VECTOR_OK, "where": "modality = audio"},
    "filter_empty_list": {"vector": VECTOR_OK, "where": {"kind": []}},
    "filter_nested_junk": {"vector": VECTOR_OK, "where": {"not": {"nope": 1}}},
    "unknown_kind": {"vector": VECTOR_OK, "kinds": ["spaceship"]},
    "unknown_modality": {"vector": VECTOR_OK, "modalities": "smell"},
    # unknown keywords, weights, negatives
    "unknown_keyword": {"smell": "roses"},
    "negative_unknown_keyword": {"vector": VECTOR_OK, "negative": {"smell": 1}},
    "negative_not_dict": {"vector": VECTOR_OK, "negative": "rain"},
    "weight_unknown": {"vector": VECTOR_OK, "weights": {"smell": 1.0}},
    "weight_negative": {"text": "a bird", "weights": {"text": -1.0}},
    "weight_nan": {"text": "a bird", "weights": {"text": float("nan")}},
    "weight_zero": {"text": "a bird", "weights": {"text": 0.0}},
    "weight_str": {"text": "a bird", "weights": {"text": "high"}},
    "weights_list": {"text": "a bird", "weights": [1.0]},
    "negative_weight_negative": {"vector": VECTOR_OK, "negative": {"text": "rain"},
                                 "negative_weight": -0.5},
    "negative_weight_nan": {"vector": VECTOR_OK, "negative": {"text": "rain"},
                            "negative_weight": float("nan")},
    "negative_weight_alone": {"vector": VECTOR_OK, "negative_weight": 0.5},
    "cancelling_negative": {"vector": VECTOR_OK, "negative": {"vector": VECTOR_OK},
                            "negative_weight": 1.0},
    # empty and broken inputs
    "text_empty": {"text": ""},
    "text_blank": {"text": " \n\t "},
    "text_surrogate": {"text": "caf\udce9"},
    "image_empty_bytes": {"image": b""},
    "image_garbage_bytes": {"image": b"\xff\xd8\xff" + bytes(300)},
    "image_garbage_file": {"image": "@garbage"},
    "image_is_text_file": {"image": "@text"},
    "image_missing_file": {"image": "@missing"},
    "image_empty_path": {"image": ""},
}


def _resolve(kwargs: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    return {k: str(files[v[1:]]) if isinstance(v, str) and v.startswith("@") else v
            for k, v in kwargs.items()}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_query_gives_one_clear_error(case: str, client: MediaSearch, files,
                                             private_tmp: Path, figures) -> None:
    before = client.store.count()
    started = time.monotonic()
    with pytest.raises(ERRORS) as info:
        client.search(**_resolve(HOSTILE[case], files))
    elapsed = time.monotonic() - started
    message = str(info.value)
    after = client.store.count()
    figures("hostile_queries", case=case, error=info.typename, refused_s=elapsed,
            points_changed=after - before)
    assert message.strip() and len(message) < 1000 and "Traceback" not in message, message
    assert elapsed < 30
    assert after == before
    assert [p for p in private_tmp.iterdir() if not p.name.startswith("torchinductor")] == []
    assert len(client.search(vector=VECTOR_OK, limit=3)) == 3  # still answers


def test_oversized_text_is_refused_before_it_is_tokenised(client: MediaSearch,
                                                          figures) -> None:
    """A 30-MB text was tokenised (~5 s of BPE) before the byte cap refused it."""
    huge = "lorem ipsum " * (40 * CAP)
    started = time.monotonic()
    with pytest.raises(ValueError, match="cap") as info:
        client.search(text=huge)
    elapsed = time.monotonic() - started
    figures("hostile_queries", case="oversized_text", error=info.typename, refused_s=elapsed,
            text_mib=len(huge.encode()) / 2**20)
    assert elapsed < 1.0
