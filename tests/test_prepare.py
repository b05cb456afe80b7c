"""Packing in the decode workers: ``Prepared`` inputs give the vectors ``encode_segments`` gives.

The executors check and pack each segment where it is decoded and hand the
encoder packs, which it finishes on its device; these tests prove the move changed no vector and no
point id, that refused inputs still reject their item, and that the local
executor's tensor byte budget bounds what waits in its queue.
"""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch
from pipeline_helpers import GOOD_FILES, make_media, open_ready_store, settings_for, sha256, vectors

from embed_workers.encoder import Encoder
from embed_workers.executors.local import TensorBudget
from embed_workers.model.tokenizer import count_tokens
from embed_workers.pipeline import (
    ItemDecoded,
    ItemStarted,
    Unprepared,
    encode_prepared,
    prepare_events,
    run_ingest,
)
from embed_workers.prepare import Prepared, Preparer, metadata_only
from embed_workers.preprocess import PreprocessOptions
from ingest.decode import decode_item
from schemas import Kind, MediaItem, Modality, Rejected, Segment, Settings, Stage, point_id

RNG = np.random.default_rng(11)
SETTINGS = Settings(preset="imagebind_tiny", device="cpu", dtype="float32", video_crops=3)
SETTINGS_OPTIONS = PreprocessOptions(video_crops=3)


def _segment(modality: Modality, kind: Kind, data, index: int = 0) -> Segment:
    return Segment(f"item-{modality}-{index}", modality, kind, index, 0.0, 2.0, data,
                   {"width": 7} if modality is Modality.VISION else {})


def _mixed_segments() -> list[Segment]:
    """Every modality and both vision layouts, interleaved, more than one batch of clips."""
    makers = [
        (Modality.VISION, Kind.VIDEO, lambda: RNG.integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)),
        (Modality.VISION, Kind.IMAGE, lambda: RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
        (Modality.TEXT, Kind.TEXT, lambda: f"rain on a roof, take {RNG.integers(1000)}"),
        (Modality.AUDIO, Kind.VIDEO, lambda: (0.1 * RNG.standard_normal(32000)).astype(np.float32)),
        (Modality.DEPTH, Kind.DEPTH, lambda: RNG.random((30, 40), dtype=np.float32)),
        (Modality.THERMAL, Kind.THERMAL, lambda: RNG.random((30, 40), dtype=np.float32)),
        (Modality.IMU, Kind.IMU, lambda: RNG.standard_normal((6, 1500)).astype(np.float32)),
    ]
    return [_segment(m, k, make(), i) for i in range(12) for m, k, make in makers]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(settings=SETTINGS)


def test_prepared_inputs_encode_to_the_vectors_of_encode_segments(encoder: Encoder) -> None:
    segments = _mixed_segments()
    preparer = Preparer(encoder.options)
    prepared = [preparer(s) for s in segments]
    np.testing.assert_allclose(encoder.encode_prepared(prepared), encoder.encode_segments(segments),
                               atol=1e-5, rtol=0)


def test_packs_are_compact_and_the_same_whatever_the_compute_dtype() -> None:
    """Vision crosses as uint8 and audio as its waveform; the crops, the fbank and any cast
    to a reduced compute dtype happen on the encoder's device."""
    clip = _segment(Modality.VISION, Kind.VIDEO, RNG.integers(0, 256, (2, 30, 40, 3), np.uint8))
    sound = _segment(Modality.AUDIO, Kind.AUDIO, RNG.standard_normal(4000).astype(np.float32))
    packed, heard = Preparer(SETTINGS_OPTIONS)(clip), Preparer(SETTINGS_OPTIONS)(sound)
    assert packed.tensor.dtype == torch.uint8 and packed.tensor.shape == (2, 30, 40, 3)
    assert packed.views == 3 and Preparer(PreprocessOptions(video_crops=1))(clip).views == 1
    assert heard.tensor.dtype == torch.float32 and heard.tensor.shape == (4000,)
    torch.testing.assert_close(heard.tensor, torch.from_numpy(sound.data), rtol=0, atol=0)


def test_prepared_carries_metadata_not_arrays_and_survives_pickling(encoder: Encoder) -> None:
    image = _segment(Modality.VISION, Kind.IMAGE, RNG.integers(0, 256, (20, 30, 3), np.uint8), 3)
    text = _segment(Modality.TEXT, Kind.TEXT, "a bird over the sea", 4)
    preparer = Preparer(encoder.options)
    for segment in (image, text):
        prepared = pickle.loads(pickle.dumps(preparer(segment)))
        meta = metadata_only(segment)
        assert _fields(prepared.segment) == _fields(meta)
        torch.testing.assert_close(prepared.tensor, preparer(segment).tensor, rtol=0, atol=0)
    assert preparer(image).segment.data.size == 0 and preparer(image).segment.extra == {"width": 7}
    assert preparer(text).segment.data == "a bird over the sea"  # the payload's ``text``


def _fields(segment: Segment) -> tuple:
    data = segment.data if isinstance(segment.data, str) else segment.data.shape
    return (segment.item_id, segment.modality, segment.kind, segment.index, segment.start_s,
            segment.end_s, data, segment.extra)


def test_a_refused_input_rejects_its_item_and_settles_its_segment() -> None:
    good = _segment(Modality.AUDIO, Kind.AUDIO, RNG.standard_normal(4000).astype(np.float32), 0)
    bad = _segment(Modality.AUDIO, Kind.AUDIO, np.full(4000, np.nan, np.float32), 1)
    events = [ItemStarted(good.item_id, 2.0), good, bad,
              Rejected(good.item_id, "", Stage.DECODE, "trailing garbage"),
              ItemDecoded(good.item_id, {"audio": 2}, 0.5)]
    out = list(prepare_events(events, Preparer()))
    assert [type(e) for e in out] == [ItemStarted, Prepared, Unprepared, Rejected, ItemDecoded]
    refused = out[2]
    assert refused.modality == "audio" and refused.rejected.stage is Stage.EMBED
    assert "audio#1" in refused.rejected.reason and "NaN" in refused.rejected.reason
    assert out[3] is events[3] and out[4].decode_s == 0.5 and out[4].prepare_s > 0


def test_a_failing_input_in_a_batch_rejects_only_itself() -> None:
    vision_only = Encoder(settings=SETTINGS, modalities=[Modality.VISION])
    preparer = Preparer(vision_only.options)
    images = [_segment(Modality.VISION, Kind.IMAGE, RNG.integers(0, 256, (20, 30, 3), np.uint8), i)
              for i in range(3)]
    sound = _segment(Modality.AUDIO, Kind.AUDIO, RNG.standard_normal(4000).astype(np.float32), 9)
    kept, vecs, rejected = encode_prepared(vision_only, [preparer(s) for s in [*images, sound]])
    assert [s.index for s in kept] == [0, 1, 2] and vecs.shape == (3, 1024)
    np.testing.assert_allclose(vecs, vision_only.encode_segments(images), atol=1e-5, rtol=0)
    assert [(r.item_id, r.stage) for r in rejected] == [(sound.item_id, Stage.EMBED)]


def test_tensor_budget_holds_decoders_until_the_consumer_gives_back() -> None:
    budget, stop = TensorBudget(100), threading.Event()
    assert budget.take(60, stop) and budget.take(40, stop)
    taken = threading.Event()
    waiter = threading.Thread(target=lambda: budget.take(10, stop) and taken.set())
    waiter.start()
    time.sleep(0.3)
    assert not taken.is_set()  # full: the decoder waits
    budget.give(60)
    waiter.join(timeout=5)
    assert taken.is_set() and budget.used == 50
    budget.give(50)
    assert budget.take(500, stop)  # bigger than the budget: passes when nothing waits
    assert not budget.take(1, _set(threading.Event()))  # a stopping run gives up


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_pipeline_stores_the_ids_and_vectors_of_encode_segments(tmp_path) -> None:
    """Per good file: decode directly, encode with ``encode_segments``; the run must match."""
    folder = make_media(tmp_path / "media")
    settings = settings_for(tmp_path / "home")
    encoder = Encoder(settings=settings)
    expected: dict[str, np.ndarray] = {}
    for member, kind in GOOD_FILES.items():
        path = folder / member
        item = MediaItem(sha256(path), str(folder), member, path.stat().st_size, kind)
        segments = [s for s in decode_item(item, path, settings.policy, settings, count_tokens)
                    if isinstance(s, Segment)]
        for segment, vector in zip(segments, encoder.encode_segments(segments), strict=True):
            key = point_id(item.item_id, segment.modality, segment.index, settings.policy,
                           encoder.model_id)
            expected[key] = vector
    with open_ready_store(settings) as store:
        run_ingest(str(folder), store, settings=settings, executor="local", encoder=encoder)
        stored = vectors(store, list(expected))
    assert set(stored) == set(expected)
    for key, vector in expected.items():
        np.testing.assert_allclose(stored[key], vector, atol=1e-5, rtol=0)
