"""Encoder on the tiny preset (seeded random weights): shapes, norms, order, batching, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embed_workers import encoder as encoder_module
from embed_workers import preprocess as pp
from embed_workers.encoder import Encoder, release_models
from schemas import Kind, Modality, Segment, Settings

RNG = np.random.default_rng(7)
SETTINGS = Settings(preset="imagebind_tiny", device="cpu", dtype="float32", video_crops=3)


def _segment(modality: Modality, kind: Kind, data, index: int = 0) -> Segment:
    return Segment(f"item-{modality}-{index}", modality, kind, index, None, None, data)


def _mixed_segments() -> list[Segment]:
    """Every modality and both vision layouts, interleaved."""
    makers = [
        (Modality.VISION, Kind.IMAGE, lambda: RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
        (Modality.TEXT, Kind.TEXT, lambda: f"a sound of rain number {RNG.integers(1000)}"),
        (Modality.AUDIO, Kind.VIDEO, lambda: (0.1 * RNG.standard_normal(32000)).astype(np.float32)),
        (Modality.VISION, Kind.VIDEO, lambda: RNG.integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)),
        (Modality.DEPTH, Kind.DEPTH, lambda: RNG.random((30, 40), dtype=np.float32)),
        (Modality.THERMAL, Kind.THERMAL, lambda: RNG.random((30, 40), dtype=np.float32)),
        (Modality.IMU, Kind.IMU, lambda: RNG.standard_normal((6, 2000)).astype(np.float32)),
    ]
    return [_segment(m, k, make(), i) for i in range(2) for m, k, make in makers]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(settings=SETTINGS)


@pytest.fixture(scope="module")
def mixed(encoder: Encoder) -> tuple[list[Segment], np.ndarray]:
    segments = _mixed_segments()
    return segments, encoder.encode_segments(segments)


def test_model_id_and_device_follow_the_preset(encoder: Encoder) -> None:
    assert encoder.model_id == "imagebind_tiny_s0"
    assert encoder.device.type == "cpu" and encoder.dtype == torch.float32


def test_vectors_are_float32_unit_norm(mixed) -> None:
    segments, vectors = mixed
    assert vectors.shape == (len(segments), 1024) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_mixed_batch_keeps_input_order_and_equals_one_by_one(encoder: Encoder, mixed) -> None:
    segments, vectors = mixed
    alone = np.stack([encoder.encode_segments([s])[0] for s in segments])
    np.testing.assert_allclose(alone, vectors, atol=1e-5)
    # Rows of one modality are close under random weights: check each is nearest to itself.
    distances = np.abs(alone[:, None] - vectors[None]).max(-1)
    assert distances.argmin(1).tolist() == list(range(len(segments)))


def test_batches_count_video_crops_as_views(encoder: Encoder, monkeypatch) -> None:
    sizes: list[int] = []
    original = Encoder.encode_batch

    def spy(self, modality, batch):
        sizes.append(batch.shape[0])
        return original(self, modality, batch)

    monkeypatch.setattr(Encoder, "encode_batch", spy)
    clips = [_segment(Modality.VISION, Kind.VIDEO, np.zeros((2, 8, 8, 3), np.uint8), i) for i in range(5)]
    Encoder(settings=SETTINGS, batch_sizes={"vision": 7}).encode_segments(clips)
    assert sizes == [2, 2, 1]  # 7 views // 3 crops = 2 clips per call


def test_query_encode_matches_segments(encoder: Encoder, mixed) -> None:
    segments, vectors = mixed
    vision = [(i, s) for i, s in enumerate(segments) if s.modality is Modality.VISION]
    queried = encoder.encode("vision", [s.data for _, s in vision])
    np.testing.assert_allclose(queried, vectors[[i for i, _ in vision]], atol=1e-5)


def test_encode_batch_takes_stacked_inputs(encoder: Encoder, mixed) -> None:
    segments, vectors = mixed
    rows = [i for i, s in enumerate(segments) if s.modality is Modality.AUDIO]
    batch = pp.stack_inputs(Modality.AUDIO, [segments[i] for i in rows])
    np.testing.assert_allclose(encoder.encode_batch("audio", batch), vectors[rows], atol=1e-5)


def test_a_second_encoder_after_release_rebuilds_identical_weights(mixed) -> None:
    segments, vectors = mixed
    rows = [i for i, s in enumerate(segments) if s.modality in (Modality.VISION, Modality.AUDIO)]
    before = dict(encoder_module._MODELS)
    release_models()
    fresh = Encoder(settings=SETTINGS).encode_segments([segments[i] for i in rows])
    np.testing.assert_array_equal(fresh, vectors[rows])
    rebuilt = encoder_module._MODELS
    assert rebuilt and all(rebuilt[k] is not before[k] for k in rebuilt)


def test_towers_are_built_once_per_process(monkeypatch) -> None:
    builds: list[list] = []
    original = encoder_module.build_model

    def counting(preset, modalities, **kwargs):
        builds.append(list(modalities))
        return original(preset, modalities, **kwargs)

    monkeypatch.setattr(encoder_module, "build_model", counting)
    release_models()
    text = [_segment(Modality.TEXT, Kind.TEXT, "one"), _segment(Modality.TEXT, Kind.TEXT, "two", 1)]
    for _ in range(2):
        Encoder(settings=SETTINGS).encode_segments(text)
    assert builds == [[Modality.TEXT]]


def test_empty_input_gives_an_empty_matrix(encoder: Encoder) -> None:
    assert encoder.encode_segments([]).shape == (0, 1024)


def test_a_bad_array_raises_value_error_naming_the_segment(encoder: Encoder) -> None:
    good = _segment(Modality.VISION, Kind.IMAGE, np.zeros((8, 8, 3), np.uint8))
    bad = Segment("bad-item", Modality.VISION, Kind.IMAGE, 4, None, None, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"segment 1 \(item bad-item, vision #4\).*\[H,W,3\]"):
        encoder.encode_segments([good, bad])


def test_nan_audio_query_is_refused(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="audio input 0.*NaN"):
        encoder.encode("audio", [np.full(32000, np.nan, np.float32)])


def test_modalities_limit_what_may_be_encoded() -> None:
    text_only = Encoder(settings=SETTINGS, modalities=["text"])
    with pytest.raises(ValueError, match="made for text; it cannot encode vision"):
        text_only.encode("vision", [np.zeros((8, 8, 3), np.uint8)])


def test_settings_choose_the_crop_count() -> None:
    one_crop = Encoder(settings=SETTINGS.model_copy(update={"video_crops": 1}))
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    assert one_crop.options.video_crops == 1
    assert one_crop.encode("vision", [clip]).shape == (1, 1024)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown model preset"):
        Encoder(preset="imagebind_gigantic", settings=SETTINGS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_vectors_agree_with_cpu_fp32(mixed) -> None:
    segments, vectors = mixed
    gpu = Encoder(settings=SETTINGS.model_copy(update={"device": "auto", "dtype": "auto"}))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.bfloat16
    out = gpu.encode_segments(segments)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cosine = (out * vectors).sum(1)
    assert cosine.min() > 0.99, cosine
