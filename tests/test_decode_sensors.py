"""Depth, thermal and IMU decode: units, ranges, shapes, windows, and bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from media import media_item
from PIL import Image

from ingest.decode import decode_item
from ingest.decode.sensors import DEFAULT_IMU_RATE_HZ, IMU_SAMPLES, depth_to_disparity
from schemas import Kind, Modality, Rejected, SegmentPolicy


def decode(path, kind, settings, policy=None):
    return list(decode_item(media_item(path, kind), path, policy or SegmentPolicy(), settings))


def test_depth_png_millimetres_to_disparity(tmp_path, decode_settings):
    mm = np.array([[0, 500, 1000], [2000, 4, 65535]], np.uint16)
    path = tmp_path / "d.png"
    Image.fromarray(mm).save(path)
    (seg,) = decode(path, Kind.DEPTH, decode_settings)
    assert seg.modality == Modality.DEPTH and seg.data.dtype == np.float32
    expected = [[0, 2, 1], [0.5, 100, 1 / 50]]  # 4 mm clipped to 1 cm; 65.5 m to 50 m
    np.testing.assert_allclose(seg.data, expected, rtol=1e-6)
    assert seg.extra == {"width": 3, "height": 2}


def test_depth_npy_metres(tmp_path, decode_settings):
    path = tmp_path / "d.npy"
    np.save(path, np.array([[1.0, 2.0], [np.nan, -1.0]]))
    (seg,) = decode(path, Kind.DEPTH, decode_settings)
    np.testing.assert_allclose(seg.data, [[1, 0.5], [0, 0]])


def test_depth_8bit_and_exr_without_extra_are_rejected(tmp_path, decode_settings):
    png = tmp_path / "d8.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    (rej,) = decode(png, Kind.DEPTH, decode_settings)
    assert isinstance(rej, Rejected) and "no defined unit" in rej.reason
    exr = tmp_path / "d.exr"
    exr.write_bytes(b"\x76\x2f\x31\x01 not really")
    (rej,) = decode(exr, Kind.DEPTH, decode_settings)
    assert isinstance(rej, Rejected)
    try:  # without OpenEXR the reason names the extra to install
        import OpenEXR  # noqa: F401
    except ImportError:
        assert "openexr" in rej.reason


def test_disparity_function():
    np.testing.assert_allclose(depth_to_disparity(np.array([0.0, 0.001, 100.0, np.inf])),
                               [0, 100, 0.02, 0])


def test_thermal_8_and_16_bit(tmp_path, decode_settings):
    p8, p16 = tmp_path / "t8.png", tmp_path / "t16.tif"
    Image.fromarray(np.array([[0, 255], [51, 102]], np.uint8)).save(p8)
    Image.fromarray(np.array([[3000, 3100], [3050, 3000]], np.uint16)).save(p16)
    (a,) = decode(p8, Kind.THERMAL, decode_settings)
    (b,) = decode(p16, Kind.THERMAL, decode_settings)
    np.testing.assert_allclose(a.data, [[0, 1], [0.2, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(b.data, [[0, 1], [0.5, 0]], rtol=1e-6)
    assert a.data.dtype == b.data.dtype == np.float32 and a.modality == Modality.THERMAL


def test_imu_csv_with_timestamps_is_windowed_and_resampled(tmp_path, decode_settings):
    t = np.arange(0, 12, 0.01)  # 100 Hz for 12 s: 5-s IMU windows (ImageBind's clip)
    frame = pd.DataFrame({"t": t, "AX": np.sin(t), "ay": t, "az": 1.0, "gx": 0.0, "gy": -t,
                          "gz": 2.0})
    path = tmp_path / "imu.csv"
    frame.to_csv(path, index=False)
    out = decode(path, Kind.IMU, decode_settings)
    assert [(s.start_s, s.end_s) for s in out] == [(0, 5), (5, 10), (6.99, 11.99)]
    for seg in out:
        assert seg.data.shape == (6, IMU_SAMPLES) and seg.data.dtype == np.float32
        assert seg.modality == Modality.IMU
    ay = out[1].data[1]
    assert ay[0] == pytest.approx(5.0) and ay[-1] == pytest.approx(10.0 - 5 / IMU_SAMPLES)
    assert np.all(np.diff(ay) > 0)


def test_imu_npy_both_layouts_and_short_recording(tmp_path, decode_settings):
    n = int(DEFAULT_IMU_RATE_HZ)  # one second: shorter than a window
    rows = np.tile(np.arange(6, dtype=np.float32), (n, 1))
    rows[:, 0] = np.linspace(0, 1, n)  # a channel that moves (a constant one is refused)
    for name, array in (("a.npy", rows), ("b.npy", rows.T)):
        np.save(tmp_path / name, array)
        (seg,) = decode(tmp_path / name, Kind.IMU, decode_settings)
        assert seg.data.shape == (6, IMU_SAMPLES)
        fifth = IMU_SAMPLES // 5  # ~1 s of a 5-s window: the rest is zero padding
        assert np.allclose(seg.data[1:, :fifth - 2], np.arange(1, 6)[:, None])
        assert np.all(np.diff(seg.data[0, :fifth - 2]) > 0)
        assert np.all(seg.data[:, fifth + 1:] == 0)


def test_imu_parquet(tmp_path, decode_settings):
    path = tmp_path / "imu.parquet"
    samples = np.ones((4000, 6))
    samples[:, 3] += 1e-3 * np.sin(np.arange(4000))  # a gyroscope's noise
    pd.DataFrame(samples, columns=["ax", "ay", "az", "gx", "gy", "gz"]).to_parquet(path)
    out = decode(path, Kind.IMU, decode_settings)
    assert len(out) == 2 and all(np.allclose(s.data, 1, atol=2e-3) for s in out)


@pytest.mark.parametrize(("content", "words"), [
    ("a,b,c\n1,2,3\n", "lacks columns"),
    ("ax,ay,az,gx,gy,gz\n1,2,3,4,5,6\n", "usable samples"),
])
def test_bad_imu_is_rejected(tmp_path, decode_settings, content, words):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    (rej,) = decode(path, Kind.IMU, decode_settings)
    assert isinstance(rej, Rejected) and words in rej.reason


def test_unknown_sensor_suffix(tmp_path, decode_settings):
    path = tmp_path / "imu.bin"
    path.write_bytes(b"\0" * 10)
    (rej,) = decode(path, Kind.IMU, decode_settings)
    assert isinstance(rej, Rejected) and "supported" in rej.reason


@pytest.mark.parametrize("name, array, kind, reason", [
    ("d.npy", np.full((4, 4), np.nan), Kind.DEPTH, "depth map has no valid measurement"),
    ("d.npy", np.zeros((4, 4), np.uint16), Kind.DEPTH, "depth map has no valid measurement"),
    ("t.npy", np.full((4, 4), np.nan, np.float32), Kind.THERMAL, "no finite value"),
    ("t.npy", np.full((4, 4), 31.5, np.float32), Kind.THERMAL, "constant (31.5"),
    ("i.npy", np.full((800, 6), np.nan), Kind.IMU, "0 usable samples"),
    ("i.npy", np.tile(np.array([0, 0, 9.81, 0, 0, 0]), (800, 1)), Kind.IMU,
     "constant on every channel"),
])
def test_sensor_data_with_nothing_to_embed_is_rejected_with_its_reason(
        tmp_path, decode_settings, name, array, kind, reason):
    path = tmp_path / name
    np.save(path, array)
    (rejected,) = decode(path, kind, decode_settings)
    assert isinstance(rejected, Rejected) and reason in rejected.reason


def test_a_constant_8_bit_thermal_frame_is_rejected(tmp_path, decode_settings):
    path = tmp_path / "t.png"
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(path)
    (rejected,) = decode(path, Kind.THERMAL, decode_settings)
    assert isinstance(rejected, Rejected) and "constant (255" in rejected.reason
