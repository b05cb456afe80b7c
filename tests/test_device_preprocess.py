"""Preprocessing on the encoder's device: batches of packs finish as the per-item recipe does.

The decode workers pack (uint8 frames, waveforms, raw sensor planes); the
encoder stacks packs of equal shape and finishes them together on its device.
These tests decode real sample media of every modality (16-bit synthetic images
for depth and thermal, since none ship offline, and a bound modality's series
file), then check:

* on the CPU, a finished batch equals each input's own ``preprocess`` within 1e-5;
* on a GPU, when there is one, finishing there equals finishing on the CPU
  within 1e-5 in float32;
* vision crosses as uint8, several times smaller than the finished crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_helpers import GOOD_FILES, make_media, sha256

from embed_workers import preprocess as pp
from embed_workers.encoder import Encoder
from embed_workers.model.tokenizer import count_tokens
from embed_workers.prepare import Preparer
from ingest.decode import decode_item
from schemas import Kind, MediaItem, Segment, SegmentPolicy, Settings

SETTINGS = Settings(preset="imagebind_tiny", device="cpu", dtype="float32", video_crops=3)
OPTIONS = pp.PreprocessOptions(video_crops=3)


def _sensor_files(folder: Path) -> dict[str, Kind]:
    """16-bit depth (millimetres) and thermal (radiometric counts) PNGs, and an IMU CSV."""
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(500, 4000, 480 * 640).reshape(480, 640)
    depth = (ramp + rng.integers(0, 200, ramp.shape)).astype(np.uint16)
    Image.fromarray(depth).save(folder / "room.depth.png")
    counts = (20000 + 3000 * np.sin(np.arange(256 * 320) / 500.0)).reshape(256, 320)
    Image.fromarray(counts.astype(np.uint16)).save(folder / "walk.thermal.png")
    t = np.arange(0, 12.0, 1 / 250.0)  # 250 Hz: every window is resampled to 2000
    columns = [np.sin(t * (k + 1)) * (k + 1) for k in range(6)]
    rows = "\n".join(",".join(f"{v:.6f}" for v in (ti, *vals))
                     for ti, *vals in zip(t, *columns, strict=True))
    (folder / "wrist.imu.csv").write_text("t,ax,ay,az,gx,gy,gz\n" + rows + "\n")
    return {"room.depth.png": Kind.DEPTH, "walk.thermal.png": Kind.THERMAL,
            "wrist.imu.csv": Kind.IMU}


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[Segment]:
    """Every segment of the sample archive plus the sensor files, decoded for real."""
    root = tmp_path_factory.mktemp("device-preprocess")
    media = make_media(root / "media")
    files = {member: (media, kind) for member, kind in GOOD_FILES.items()}
    sensors = root / "sensors"
    files |= {member: (sensors, kind) for member, kind in _sensor_files(sensors).items()}
    out: list[Segment] = []
    for member, (folder, kind) in files.items():
        path = folder / member
        item = MediaItem(sha256(path), str(folder), member, path.stat().st_size, kind)
        out += [s for s in decode_item(item, path, SegmentPolicy(), SETTINGS, count_tokens)
                if isinstance(s, Segment)]
    return out + _extension_segments(root)


def _extension_segments(root: Path) -> list[Segment]:
    """A bound modality's series file (``mediabind bind``), decoded through its spec."""
    from embed_workers.bind.artifact import write_extension
    from embed_workers.model.extension import ExtensionEncoder, init_weights_
    from schemas.extension import ExtensionSpec, Geometry, default_patterns, extension_kind

    settings = SETTINGS.model_copy(update={"home": root / "home"})
    spec = ExtensionSpec("probe", "series", "imagebind_tiny", "imagebind_tiny_s0",
                         Geometry(channels=4, samples=256, window=8),
                         patterns=default_patterns("probe", "series"))
    spec = write_extension(init_weights_(ExtensionEncoder(spec), seed=0), settings.home)
    path = root / "line.probe.npy"
    np.save(path, np.random.default_rng(5).standard_normal((700, 4)).astype(np.float32))
    kind = extension_kind(spec)
    item = MediaItem(sha256(path), str(root), path.name, path.stat().st_size, kind)
    return [s for s in decode_item(item, path, SegmentPolicy(), settings) if isinstance(s, Segment)]


def _by_layout(segments: list[Segment]) -> dict[str, list[Segment]]:
    groups: dict[str, list[Segment]] = {}
    for segment in segments:
        groups.setdefault(pp.batch_key(segment), []).append(segment)
    return groups


def test_the_sample_media_cover_every_layout(segments: list[Segment]) -> None:
    assert set(_by_layout(segments)) == set(pp.SPECS_BY_NAME)


@pytest.mark.parametrize("layout", sorted(pp.SPECS_BY_NAME))
def test_a_finished_batch_equals_each_inputs_own_recipe_on_the_cpu(
        segments: list[Segment], layout: str) -> None:
    encoder = Encoder(settings=SETTINGS)
    group = _by_layout(segments)[layout]
    preparer = Preparer(encoder.options)
    batch = encoder.finish_batch(layout, [preparer(s).tensor for s in group])
    expected = torch.stack([pp.to_model_input(s, OPTIONS) for s in group])
    assert batch.shape == expected.shape and batch.dtype == expected.dtype
    torch.testing.assert_close(batch, expected, rtol=0, atol=1e-5)


def test_packs_of_other_shapes_finish_in_their_own_stacks_and_keep_row_order() -> None:
    """Clips of a landscape and a portrait video, interleaved, in one batch."""
    rng = np.random.default_rng(8)
    wide = [rng.integers(0, 256, (2, 224, 398, 3), np.uint8) for _ in range(3)]
    tall = [rng.integers(0, 256, (2, 398, 224, 3), np.uint8) for _ in range(2)]
    clips = [wide[0], tall[0], wide[1], wide[2], tall[1]]
    encoder = Encoder(settings=SETTINGS)
    batch = encoder.finish_batch("video_clip", [pp.pack_clip(c) for c in clips])
    for row, clip in enumerate(clips):
        torch.testing.assert_close(batch[row], pp.clip_to_tensor(clip, OPTIONS), rtol=0, atol=0)


def test_vision_crosses_as_uint8_frames_several_times_smaller_than_the_crops(
        segments: list[Segment]) -> None:
    preparer = Preparer(OPTIONS)
    clip = next(s for s in segments if pp.batch_key(s) == "video_clip")
    image = next(s for s in segments if pp.batch_key(s) == "image")
    packed = preparer(clip)
    assert packed.tensor.dtype == torch.uint8 and packed.views == 3
    assert preparer(image).tensor.dtype == torch.uint8
    finished = pp.to_model_input(clip, OPTIONS)
    assert finished.nelement() * finished.element_size() >= 3 * packed.nbytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", sorted(pp.SPECS_BY_NAME))
def test_finishing_on_the_gpu_equals_finishing_on_the_cpu(
        segments: list[Segment], layout: str) -> None:
    packed = [Preparer(OPTIONS)(s).tensor for s in _by_layout(segments)[layout]]
    # Stack those of the first shape (a last audio window may be shorter).
    packs = torch.stack([t for t in packed if t.shape == packed[0].shape])
    on_cpu = pp.finish(layout, packs, OPTIONS)
    on_gpu = pp.finish(layout, packs.cuda(), OPTIONS).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=1e-5)
