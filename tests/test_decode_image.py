"""Image decode on real photos (scikit-image samples) saved in awkward forms."""

from __future__ import annotations

import numpy as np
import pytest
from media import media_item
from PIL import Image
from skimage import data as samples

from ingest.decode import decode_item
from schemas import Kind, Modality, Rejected, Segment, SegmentPolicy, Settings, Stage


def decode_one(path, settings):
    out = list(decode_item(media_item(path, Kind.IMAGE), path, SegmentPolicy(), settings))
    assert len(out) == 1
    return out[0]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return samples.chelsea()  # 300x451 RGB cat


def test_plain_jpeg(tmp_path, photo, decode_settings):
    path = tmp_path / "cat.jpg"
    Image.fromarray(photo).save(path, quality=95)
    seg = decode_one(path, decode_settings)
    assert isinstance(seg, Segment) and seg.modality == Modality.VISION
    assert seg.data.dtype == np.uint8 and seg.data.shape == (300, 451, 3)
    assert seg.extra == {"width": 451, "height": 300}
    assert (seg.start_s, seg.end_s, seg.index) == (None, None, 0)
    assert np.abs(seg.data.astype(int) - photo).mean() < 4


def test_exif_orientation_is_applied(tmp_path, photo, decode_settings):
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    Image.fromarray(photo).save(path, exif=exif, quality=95)
    seg = decode_one(path, decode_settings)
    assert seg.data.shape == (451, 300, 3)
    assert seg.extra == {"width": 300, "height": 451}
    upright = np.rot90(photo, k=-1)
    assert np.abs(seg.data.astype(int) - upright).mean() < 4


def test_cmyk_and_palette(tmp_path, photo, decode_settings):
    cmyk, pal = tmp_path / "cmyk.jpg", tmp_path / "pal.png"
    Image.fromarray(photo).convert("CMYK").save(cmyk, quality=95)
    Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    for path in (cmyk, pal):
        seg = decode_one(path, decode_settings)
        assert seg.data.shape == (300, 451, 3)
        assert np.abs(seg.data.astype(int) - photo).mean() < 12


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path, decode_settings):
    grey = samples.camera().astype(np.uint16) * 257  # full 16-bit range
    path = tmp_path / "camera16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    seg = decode_one(path, decode_settings)
    assert seg.data.shape == (512, 512, 3)
    assert np.array_equal(seg.data[..., 0], samples.camera())  # value/257 exactly


def test_alpha_is_composited_on_white(tmp_path, photo, decode_settings):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0  # top rows fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    seg = decode_one(path, decode_settings)
    assert np.all(seg.data[:100] == 255)
    assert np.array_equal(seg.data[100:], photo[100:])


def test_animated_gif_gives_its_first_frame(tmp_path, photo, decode_settings):
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    seg = decode_one(path, decode_settings)
    assert seg.extra["frames"] == 2
    assert np.abs(seg.data.astype(int) - photo).mean() < 20


def test_huge_image_is_downscaled(tmp_path, photo, decode_settings):
    path = tmp_path / "big.jpg"
    Image.fromarray(photo).save(path)
    small = Settings(home=decode_settings.home, max_image_pixels=200 * 200)  # 3.4x less
    seg = decode_one(path, small)
    h, w = seg.data.shape[:2]
    assert h * w <= 200 * 200 and abs(w / h - 451 / 300) < 0.05
    assert seg.extra == {"width": 451, "height": 300}  # the source size


def test_decompression_bomb_is_rejected(tmp_path, decode_settings):
    path = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(path)
    tiny = Settings(home=decode_settings.home, max_image_pixels=1000)
    rej = decode_one(path, tiny)
    assert isinstance(rej, Rejected) and rej.stage == Stage.DECODE
    assert "decompression bomb" in rej.reason


def test_truncated_image_is_rejected(tmp_path, photo, decode_settings):
    path = tmp_path / "cut.jpg"
    Image.fromarray(photo).save(path)
    path.write_bytes(path.read_bytes()[:3000])
    rej = decode_one(path, decode_settings)
    assert isinstance(rej, Rejected) and "truncated" in rej.reason


def test_not_an_image(tmp_path, decode_settings):
    path = tmp_path / "fake.png"
    path.write_bytes(b"hello, I am text")
    rej = decode_one(path, decode_settings)
    assert isinstance(rej, Rejected) and "not an image" in rej.reason
