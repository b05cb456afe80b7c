"""Preprocessing: parity with the reference transforms, our recipes, validation, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchaudio.compliance import kaldi
from torchvision import transforms as T

from embed_workers import preprocess as P
from schemas import Kind, Modality, Segment

RNG = np.random.default_rng(0)


def _segment(modality: Modality, kind: Kind, data, index: int = 0) -> Segment:
    return Segment("item", modality, kind, index, None, None, data)


# --- image ----------------------------------------------------------------------

REFERENCE_IMAGE = T.Compose([
    T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
    T.CenterCrop(224),
    T.ToTensor(),
    T.Normalize(P.CLIP_MEAN, P.CLIP_STD),
])


def _images() -> dict[str, np.ndarray]:
    coffee = skimage.data.coffee()
    return {
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": coffee,
        "portrait": np.ascontiguousarray(skimage.data.chelsea().transpose(1, 0, 2)),
        "odd_crop": skimage.data.astronaut()[3:304, 11:238],
        "one_px_wider": coffee[:, :225],
        "panorama": RNG.integers(0, 256, (225, 1000, 3), dtype=np.uint8),
        "tiny_upscaled": RNG.integers(0, 256, (17, 9, 3), dtype=np.uint8),
        "square_exact": RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    }


@pytest.mark.parametrize("name", list(_images()))
def test_image_matches_torchvision_pil_path(name: str) -> None:
    image = _images()[name]
    ours = P.image_to_tensor(image)
    theirs = REFERENCE_IMAGE(Image.fromarray(image))
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_short_side_size_keeps_aspect_and_truncates_the_long_side() -> None:
    assert P.short_side_size(300, 451) == (224, int(224 * 451 / 300))
    assert P.short_side_size(451, 300) == (int(224 * 451 / 300), 224)
    assert P.short_side_size(50, 50) == (224, 224)


# --- video clip -------------------------------------------------------------------


def _bilinear_numpy(plane: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resampling without antialias, written out in float64."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, wy = axis(*plane.shape[:1], out_h)
    x0, x1, wx = axis(plane.shape[1], out_w)
    top = plane[y0][:, x0] * (1 - wx) + plane[y0][:, x1] * wx
    bottom = plane[y1][:, x0] * (1 - wx) + plane[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def _clip_reference(frames: np.ndarray, offsets: list[tuple[int, int]], size: tuple[int, int]) -> np.ndarray:
    """[crops,3,2,224,224]: /255 → bilinear to ``size`` → CLIP norm → crops at ``offsets``."""
    mean, std = np.array(P.CLIP_MEAN), np.array(P.CLIP_STD)
    out = np.empty((len(offsets), 3, 2, 224, 224))
    for t in range(2):
        for c in range(3):
            plane = _bilinear_numpy(frames[t, :, :, c] / 255.0, *size)
            plane = (plane - mean[c]) / std[c]
            for k, (top, left) in enumerate(offsets):
                out[k, c, t] = plane[top : top + 224, left : left + 224]
    return out


# Offsets worked out by hand from the reference rule (start, ceil(centre), end).
CLIP_CASES = {
    # 240 high, 320 wide → 224 × floor(320/240·224) = 224 × 298; x offsets 0, 37, 74
    "landscape": ((240, 320), (224, 298), [(0, 0), (0, 37), (0, 74)]),
    # 330 high, 240 wide → floor(330/240·224) = 308 × 224; y offsets 0, 42, 84
    "portrait": ((330, 240), (308, 224), [(0, 0), (42, 0), (84, 0)]),
    # odd excess: 100 × 151 → 224 × 338; centre ceil(114/2) = 57
    "odd_landscape": ((100, 151), (224, 338), [(0, 0), (0, 57), (0, 114)]),
    "square": ((230, 230), (224, 224), [(0, 0), (0, 0), (0, 0)]),
}


@pytest.mark.parametrize("name", list(CLIP_CASES))
def test_clip_matches_straightforward_computation(name: str) -> None:
    (h, w), size, offsets = CLIP_CASES[name]
    frames = RNG.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    assert [P.crop_offsets(*size, i) for i in range(3)] == offsets
    ours = P.clip_to_tensor(frames, P.PreprocessOptions(video_crops=3))
    assert ours.shape == (3, 3, 2, 224, 224) and ours.dtype == torch.float32
    # torch computes source positions in float32: ~1e-4 here is < 0.01 of a grey level.
    np.testing.assert_allclose(ours.numpy(), _clip_reference(frames, offsets, size), atol=2e-4)


def test_one_crop_is_the_centre_crop_of_three() -> None:
    frames = RNG.integers(0, 256, (2, 120, 200, 3), dtype=np.uint8)
    one = P.clip_to_tensor(frames, P.PreprocessOptions(video_crops=1))
    three = P.clip_to_tensor(frames, P.PreprocessOptions(video_crops=3))
    assert one.shape == (1, 3, 2, 224, 224)
    assert torch.equal(one[0], three[1])
    assert not torch.equal(three[0], three[2])


def test_clip_keeps_frame_order() -> None:
    frames = np.zeros((2, 224, 224, 3), dtype=np.uint8)
    frames[1] = 255
    out = P.clip_to_tensor(frames, P.PreprocessOptions(video_crops=1))[0]
    assert torch.all(out[:, 0] < 0) and torch.all(out[:, 1] > 0)


# --- audio ---------------------------------------------------------------------------


def _audio_reference(samples: np.ndarray) -> torch.Tensor:
    """ImageBind's waveform2melspec + Normalize, with torchaudio's fbank."""
    wave = torch.from_numpy(samples)[None]
    wave = wave - wave.mean()
    fbank = kaldi.fbank(wave, htk_compat=True, sample_frequency=16000, use_energy=False,
                        window_type="hanning", num_mel_bins=128, dither=0.0,
                        frame_length=25, frame_shift=10).transpose(0, 1)
    pad = 204 - fbank.shape[1]
    fbank = torch.nn.ZeroPad2d((0, pad, 0, 0))(fbank) if pad > 0 else fbank[:, :204]
    return T.Normalize(mean=-4.268, std=9.138)(fbank.unsqueeze(0))


def _waves() -> dict[str, np.ndarray]:
    t = np.arange(32000) / 16000
    return {
        "tone": (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1).astype(np.float32),
        "noise": (0.1 * RNG.standard_normal(32000)).astype(np.float32),
        "silence": np.zeros(32000, np.float32),
        "short_0_5s": (0.1 * RNG.standard_normal(8000)).astype(np.float32),
        "long_3s": (0.1 * RNG.standard_normal(48000)).astype(np.float32),
    }


@pytest.mark.parametrize("name", list(_waves()))
def test_audio_matches_reference_pipeline(name: str) -> None:
    wave = _waves()[name]
    ours = P.audio_to_tensor(wave)
    assert ours.shape == (1, 128, 204) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _audio_reference(wave), rtol=0, atol=1e-5)


def test_short_audio_pads_with_normalised_zeros() -> None:
    out = P.audio_to_tensor((0.1 * RNG.standard_normal(8000)).astype(np.float32))
    frames = 1 + (8000 - 400) // 160
    pad_value = (0.0 - P.AUDIO_MEAN) / P.AUDIO_STD
    assert torch.allclose(out[0, :, frames:], torch.tensor(pad_value))
    assert not torch.allclose(out[0, :, frames - 1], torch.tensor(pad_value))


def test_audio_accepts_float64_and_ignores_dc() -> None:
    wave = 0.1 * RNG.standard_normal(32000)
    torch.testing.assert_close(P.audio_to_tensor(wave), P.audio_to_tensor((wave + 0.5).astype(np.float32)),
                               rtol=0, atol=1e-4)


# --- depth, thermal, imu (our recipes) ---------------------------------------------


def test_depth_is_standardised_with_omnivore_statistics() -> None:
    out = P.depth_to_tensor(np.full((240, 320), 0.2, np.float32))
    assert out.shape == (1, 224, 224)
    torch.testing.assert_close(out, torch.full((1, 224, 224), (0.2 - 0.0418) / 0.0295))


def test_depth_crops_the_centre_of_the_long_side() -> None:
    disparity = np.zeros((224, 448), np.float32)
    disparity[:, 112:336] = 1.0  # the centre half
    out = P.depth_to_tensor(disparity)
    torch.testing.assert_close(out, torch.full((1, 224, 224), (1.0 - 0.0418) / 0.0295))


def test_thermal_is_resized_not_normalised_and_stays_in_unit_range() -> None:
    flat = P.thermal_to_tensor(np.full((100, 80), 0.25, np.float32))
    assert flat.shape == (1, 224, 224)
    torch.testing.assert_close(flat, torch.full((1, 224, 224), 0.25))
    edges = np.zeros((60, 60), np.float32)
    edges[:, 30:] = 1.0  # a hard edge makes bicubic overshoot
    out = P.thermal_to_tensor(edges)
    assert out.min() == 0.0 and out.max() == 1.0


def test_imu_keeps_2000_samples_and_resamples_other_lengths_linearly() -> None:
    exact = RNG.standard_normal((6, 2000)).astype(np.float32)
    assert torch.equal(P.imu_to_tensor(exact), torch.from_numpy(exact))
    ramp = np.tile(np.arange(500, dtype=np.float32), (6, 1))  # value = sample index
    out = P.imu_to_tensor(ramp)
    assert out.shape == (6, 2000)
    expected = np.minimum(np.arange(2000) * 500 / 2000, 499)
    np.testing.assert_allclose(out[3].numpy(), expected, atol=1e-5)


def test_text_gives_77_token_ids() -> None:
    ids = P.text_to_tensor("the crackle of a fire")
    assert ids.shape == (77,) and ids.dtype == torch.long and ids[0] == 49406


# --- validation ----------------------------------------------------------------------

BAD_INPUTS = [
    (Modality.VISION, Kind.IMAGE, np.zeros((10, 10, 3), np.float32), "vision image.*uint8.*dtype float32"),
    (Modality.VISION, Kind.IMAGE, np.zeros((10, 10, 4), np.uint8), r"vision image.*\[H,W,3\].*shape"),
    (Modality.VISION, Kind.IMAGE, np.zeros((0, 10, 3), np.uint8), "vision image.*shape"),
    (Modality.VISION, Kind.IMAGE, np.zeros((2, 10, 10, 3), np.uint8), r"vision image.*\[H,W,3\]"),
    (Modality.VISION, Kind.VIDEO, np.zeros((3, 10, 10, 3), np.uint8), r"vision video clip.*\[2,H,W,3\]"),
    (Modality.VISION, Kind.VIDEO, [[1, 2]], "vision video clip.*got list"),
    (Modality.AUDIO, Kind.AUDIO, np.full(32000, np.nan, np.float32), "audio.*NaN"),
    (Modality.AUDIO, Kind.AUDIO, np.zeros(32000, np.int16), "audio.*dtype int16"),
    (Modality.AUDIO, Kind.VIDEO, np.zeros(100, np.float32), "audio.*400 samples.*got 100"),
    (Modality.AUDIO, Kind.AUDIO, np.zeros((2, 32000), np.float32), "audio.*mono"),
    (Modality.DEPTH, Kind.DEPTH, np.full((5, 5), -1.0, np.float32), "depth.*negative"),
    (Modality.DEPTH, Kind.DEPTH, np.full((5, 5), np.inf, np.float32), "depth.*infinite"),
    (Modality.THERMAL, Kind.THERMAL, np.full((5, 5), 2.0, np.float32), r"thermal.*outside \[0,1\]"),
    (Modality.THERMAL, Kind.THERMAL, np.zeros((5, 5, 1), np.float32), r"thermal.*\[H,W\]"),
    (Modality.IMU, Kind.IMU, np.zeros((3, 2000), np.float32), r"imu.*\[6,T\].*shape \(3, 2000\)"),
    (Modality.IMU, Kind.IMU, np.zeros((6, 0), np.float32), "imu.*shape"),
    (Modality.TEXT, Kind.TEXT, "   ", "text.*empty"),
    (Modality.TEXT, Kind.TEXT, b"bytes", "text.*got bytes"),
]


@pytest.mark.parametrize(("modality", "kind", "data", "message"), BAD_INPUTS,
                         ids=[f"{m}-{k}-{i}" for i, (m, k, _, _) in enumerate(BAD_INPUTS)])
def test_invalid_input_raises_a_clear_error(modality, kind, data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        P.to_model_input(_segment(modality, kind, data))


def test_unknown_modality_kind_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="no model input for modality"):
        P.input_spec(Modality.TEXT, Kind.IMAGE)


def test_query_kind_follows_vision_rank() -> None:
    assert P.query_kind("vision", np.zeros((4, 4, 3), np.uint8)) is Kind.IMAGE
    assert P.query_kind("vision", np.zeros((2, 4, 4, 3), np.uint8)) is Kind.VIDEO
    assert P.query_kind("audio", np.zeros(400, np.float32)) is Kind.AUDIO
    with pytest.raises(ValueError, match="vision.*rank 2"):
        P.query_kind("vision", np.zeros((4, 4), np.uint8))


def test_options_refuse_other_crop_counts() -> None:
    with pytest.raises(ValueError, match="video_crops must be 1 or 3"):
        P.PreprocessOptions(video_crops=2)


# --- batching ------------------------------------------------------------------------

STACK_CASES = {
    "image": (Modality.VISION, Kind.IMAGE, lambda: RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8),
              (3, 224, 224)),
    "video_clip": (Modality.VISION, Kind.VIDEO,
                   lambda: RNG.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8), (3, 3, 2, 224, 224)),
    "audio": (Modality.AUDIO, Kind.VIDEO, lambda: RNG.standard_normal(32000).astype(np.float32),
              (1, 128, 204)),
    "text": (Modality.TEXT, Kind.TEXT, lambda: "a dog barking", (77,)),
    "depth": (Modality.DEPTH, Kind.DEPTH, lambda: RNG.random((30, 40), np.float32), (1, 224, 224)),
    "thermal": (Modality.THERMAL, Kind.THERMAL, lambda: RNG.random((30, 40), np.float32), (1, 224, 224)),
    "imu": (Modality.IMU, Kind.IMU, lambda: RNG.standard_normal((6, 1000)).astype(np.float32), (6, 2000)),
}


@pytest.mark.parametrize("name", list(STACK_CASES))
def test_stack_inputs_batches_in_order(name: str) -> None:
    modality, kind, make, shape = STACK_CASES[name]
    segments = [_segment(modality, kind, make(), i) for i in range(3)]
    batch = P.stack_inputs(modality, segments)
    assert batch.shape == (3, *shape)
    for i, segment in enumerate(segments):
        assert torch.equal(batch[i], P.to_model_input(segment))
    assert P.batch_key(segments[0]) == name


def test_stack_inputs_refuses_mixed_layouts_and_modalities() -> None:
    image = _segment(Modality.VISION, Kind.IMAGE, np.zeros((8, 8, 3), np.uint8))
    clip = _segment(Modality.VISION, Kind.VIDEO, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot batch"):
        P.stack_inputs(Modality.VISION, [image, clip])
    with pytest.raises(ValueError, match="cannot batch"):
        P.stack_inputs(Modality.AUDIO, [image])
    with pytest.raises(ValueError, match="no vision segments"):
        P.stack_inputs(Modality.VISION, [])


def test_stride_crop_math_matches_reference_rule() -> None:
    """crop_offsets: start, ceil(centre), end on the long side; centre on the short side."""
    for h, w in [(224, 500), (501, 224), (224, 224)]:
        long_excess = max(h, w) - 224
        offsets = [P.crop_offsets(h, w, i) for i in range(3)]
        along = [o[0] if h > w else o[1] for o in offsets]
        assert along == [0, math.ceil(long_excess / 2), long_excess]
