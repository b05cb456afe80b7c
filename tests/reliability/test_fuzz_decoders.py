"""Fuzzing every decoder (and kind detection) with mutated real files.

Seeds are real files of every kind (scikit-image photos, ffmpeg-made media,
sensor arrays, subtitles); hypothesis truncates them, flips, inserts and zeroes
bytes, and splices in the header of another seed. Property: every input gives
Segments in the layout its modality promises and/or one Rejected with a
reason; nothing raises; no temporary file is left; each decode ends within a
bound set by the (lowered) ffmpeg timeout. The figures count the inputs each
run decoded, what came out, and the slowest decode.

Long mode: ``MEDIABIND_FUZZ_EXAMPLES=2000 pytest tests/reliability/test_fuzz_decoders.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hostile import ffmpeg_bytes, image_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ingest.decode import decode_item
from ingest.kinds import classify
from schemas import Kind, MediaItem, Modality, Rejected, Segment, Settings

EXAMPLES = int(os.environ.get("MEDIABIND_FUZZ_EXAMPLES", "20"))
FFMPEG_TIMEOUT_S = 10.0
DECODE_BOUND_S = 6 * FFMPEG_TIMEOUT_S  # a few ffmpeg calls per item at most
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, EXAMPLES * 20))]

Seed = tuple[str, bytes]  # (file name, bytes)


# --- seeds -------------------------------------------------------------------------------

def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _png16(values: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(out, format="PNG")
    return out.getvalue()


def _seeds(work: Path) -> dict[Kind, list[Seed]]:
    ramp = np.linspace(500, 4000, 24 * 32).reshape(24, 32)
    imu = "t,ax,ay,az,gx,gy,gz\n" + "".join(
        f"{i / 400:.4f},{np.sin(i / 9):.3f},0.1,9.8,0.01,0.02,{np.cos(i / 7):.3f}\n"
        for i in range(600))
    return {
        Kind.IMAGE: [(f"photo.{ext}", image_bytes(fmt, size=40)) for fmt, ext in (
            ("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"),
            ("TIFF", "tif"))],
        Kind.VIDEO: [
            ("clip.mp4", ffmpeg_bytes(work, "c.mp4", "-i", "testsrc=d=1:s=32x24:r=10", "-f",
                                      "lavfi", "-i", "sine=d=1", "-pix_fmt", "yuv420p",
                                      "-shortest")),
            ("clip.mkv", ffmpeg_bytes(work, "c.mkv", "-i", "testsrc=d=1:s=32x24:r=10", "-c:v",
                                      "mpeg4")),
            ("clip.avi", ffmpeg_bytes(work, "c.avi", "-i", "testsrc=d=1:s=32x24:r=10", "-c:v",
                                      "mjpeg")),
        ],
        Kind.AUDIO: [(f"tone.{ext}", ffmpeg_bytes(work, f"t.{ext}", "-i", "sine=d=0.6"))
                     for ext in ("wav", "flac", "mp3", "m4a", "ogg")],
        Kind.TEXT: [
            ("notes.txt", "Café au lait — naïve façade, 日本語のテキスト.\n".encode() * 6),
            ("notes.md", b"# title\nwords " * 40),
            ("subs.srt", b"1\n00:00:01,000 --> 00:00:02,500\n<i>Hello</i> there\n\n"
                         b"2\n00:00:03,000 --> 00:00:04,000\nGeneral Kenobi\n"),
            ("subs.vtt", b"WEBVTT\n\n00:01.000 --> 00:02.000\n{\\an8}a caption\n"),
            ("utf16.txt", "sixteen-bit text".encode("utf-16")),
        ],
        Kind.DEPTH: [("room.depth.png", _png16(ramp)),
                     ("room.depth.npy", _npy((ramp / 1000).astype(np.float32))),
                     ("room.depth.npy", _npy(ramp.astype(np.uint16)))],
        Kind.THERMAL: [("cam.thermal.png", image_bytes("PNG", size=32, gray=True)),
                       ("cam.thermal.tiff", _png16(ramp)),  # PIL reads PNG bytes under any name
                       ("cam.thermal.npy", _npy(ramp.astype(np.float32)))],
        Kind.IMU: [("walk.imu.csv", imu.encode()),
                   ("walk.imu.npy", _npy(np.random.default_rng(0).normal(size=(900, 6))))],
    }


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[Kind, list[Seed]]:
    return _seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory: pytest.TempPathFactory):
    """tempfile's folder for this module only, so leftovers can be counted."""
    folder = tmp_path_factory.mktemp("tempfiles")
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    yield folder
    tempfile.tempdir = saved


# --- mutations -----------------------------------------------------------------------------

Mutation = Callable[[bytes, bytes], bytes]  # (data, another seed's bytes) -> data


def _at(data: bytes, where: float, near_head: bool) -> int:
    span = min(len(data), 512) if near_head else len(data)
    return int(where * max(span - 1, 0))


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    op = draw(st.sampled_from(["truncate", "flip", "insert", "zero", "splice", "repeat"]))
    where, near_head = draw(st.floats(0, 1)), draw(st.booleans())
    blob = draw(st.binary(min_size=1, max_size=64))
    length = draw(st.integers(1, 256))

    def apply(data: bytes, other: bytes) -> bytes:
        i = _at(data, where, near_head)
        return MUTATORS[op](data, other, i, blob, length)
    return apply


def _flip(data: bytes, i: int, blob: bytes) -> bytes:
    out = bytearray(data)
    for k, b in enumerate(blob[:8]):
        if i + k < len(out):
            out[i + k] ^= b or 0xFF
    return bytes(out)


MUTATORS: dict[str, Callable[[bytes, bytes, int, bytes, int], bytes]] = {
    "truncate": lambda d, o, i, b, n: d[:i],
    "flip": lambda d, o, i, b, n: _flip(d, i, b),
    "insert": lambda d, o, i, b, n: d[:i] + b + d[i:],
    "zero": lambda d, o, i, b, n: d[:i] + bytes(min(n, len(d) - i)) + d[i + n:],
    "splice": lambda d, o, i, b, n: o[:n] + d[n:],  # another format's header on this body
    "repeat": lambda d, o, i, b, n: d[:i + n] + d[i:],
}


# --- the property ----------------------------------------------------------------------------

def _image_or_clip(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and ((a.ndim == 3 and a.shape[2] == 3)
                                    or (a.ndim == 4 and a.shape[0] == 2 and a.shape[3] == 3))


LAYOUT: dict[Modality, Callable[[object], bool]] = {
    Modality.VISION: lambda d: isinstance(d, np.ndarray) and _image_or_clip(d) and d.size > 0,
    Modality.AUDIO: lambda d: isinstance(d, np.ndarray) and d.dtype == np.float32
    and d.ndim == 1 and d.size >= 400 and bool(np.isfinite(d).all()),
    Modality.TEXT: lambda d: isinstance(d, str) and bool(d.strip()),
    Modality.DEPTH: lambda d: isinstance(d, np.ndarray) and d.dtype == np.float32
    and d.ndim == 2 and d.size > 0 and bool(np.isfinite(d).all()),
    Modality.THERMAL: lambda d: isinstance(d, np.ndarray) and d.dtype == np.float32
    and d.ndim == 2 and d.size > 0 and bool(((d >= 0) & (d <= 1)).all()),
    Modality.IMU: lambda d: isinstance(d, np.ndarray) and d.dtype == np.float32
    and d.shape == (6, 2000) and bool(np.isfinite(d).all()),
}


@dataclass
class Seen:
    """What one fuzz run fed a decoder and got back, for the figures."""

    inputs: int = 0
    rejected: int = 0
    slowest_s: float = 0.0

    def add(self, out: list[Segment | Rejected], seconds: float) -> None:
        self.inputs += 1
        self.rejected += any(isinstance(o, Rejected) for o in out)
        self.slowest_s = max(self.slowest_s, seconds)

    def figures(self) -> dict[str, float]:
        return {"inputs": self.inputs, "rejected": self.rejected,
                "decoded": self.inputs - self.rejected, "slowest_s": self.slowest_s,
                "bound_s": DECODE_BOUND_S, "ffmpeg_timeout_s": FFMPEG_TIMEOUT_S}


def check_outcomes(name: str, out: list[Segment | Rejected]) -> None:
    """At most one rejection, last and with a reason; every segment in its layout."""
    rejected = [o for o in out if isinstance(o, Rejected)]
    assert len(rejected) <= 1 and (not rejected or out[-1] is rejected[0])
    for o in out:
        if isinstance(o, Rejected):
            assert o.reason.strip() and o.uri, o
        else:
            assert isinstance(o, Segment), o
            assert LAYOUT[o.modality](o.data), f"{name}: bad {o.modality} layout"
    assert out, f"{name}: neither a segment nor a rejection"


def check_decode(kind: Kind, name: str, data: bytes, tmp: Path,
                 seen: Seen | None = None) -> list[Segment | Rejected]:
    """Decode ``data`` as ``kind`` and check the property; returns what came out."""
    work = Path(tempfile.mkdtemp(dir=tmp))
    path = work / name
    path.write_bytes(data)
    settings = Settings(home=work / "home", ffmpeg_timeout_s=FFMPEG_TIMEOUT_S)
    item = MediaItem("fuzz", str(work), name, len(data), kind)
    started = time.monotonic()
    classify(name, data[:4096], path, probe_timeout_s=FFMPEG_TIMEOUT_S)  # must not raise
    out = list(decode_item(item, path, settings.policy, settings))
    elapsed = time.monotonic() - started
    if kind in (Kind.AUDIO, Kind.VIDEO):  # sound decoded in process too, as Ray actors do
        here = settings.model_copy(update={"audio_decoder": "pyav"})
        again = time.monotonic()
        check_outcomes(name, list(decode_item(item, path, here.policy, here)))
        assert time.monotonic() - again < DECODE_BOUND_S, f"{name}: in process, too slow"
    shutil.rmtree(work)
    assert elapsed < DECODE_BOUND_S, f"{name}: {elapsed:.1f} s"
    check_outcomes(name, out)
    if seen is not None:  # counted once the property held: a failure is not an input passed
        seen.add(out, elapsed)
    return out


def _fuzz(kind: Kind, seeds: dict[Kind, list[Seed]], tmp: Path, data: st.DataObject,
          seen: Seen) -> None:
    # Seeds are drawn by index so a failure report names them instead of printing their bytes.
    name, mutated = seeds[kind][data.draw(st.integers(0, len(seeds[kind]) - 1), label="seed")]
    others = [s for k in seeds for s in seeds[k]]
    for mutate in data.draw(st.lists(mutations(), min_size=1, max_size=3), label="mutations"):
        other = others[data.draw(st.integers(0, len(others) - 1), label="header from")]
        mutated = mutate(mutated, other[1])
    check_decode(kind, name, mutated, tmp, seen)
    assert list(tmp.iterdir()) == [], "temporary files left behind"


@pytest.mark.parametrize("kind", list(Kind), ids=[k.value for k in Kind])
def test_fuzz_decoder(kind: Kind, seeds, private_tmp: Path, figures) -> None:
    seen = Seen()

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        _fuzz(kind, seeds, private_tmp, data, seen)
    run()
    figures("fuzz_decoders", case=kind.value, **seen.figures())


@pytest.mark.parametrize("kind", list(Kind), ids=[k.value for k in Kind])
def test_seeds_decode_cleanly(kind: Kind, seeds, private_tmp: Path, figures) -> None:
    """The unmutated seeds decode without rejection: the fuzzing starts from valid files."""
    seen = Seen()
    for name, data in seeds[kind]:
        out = check_decode(kind, name, data, private_tmp, seen)
        assert not any(isinstance(o, Rejected) for o in out), (name, out[-1])
    figures("fuzz_decoder_seeds", case=kind.value, **seen.figures())


def test_thermal_with_infinities_stays_in_unit_range(private_tmp: Path) -> None:
    """Found by fuzzing the stretch: ±inf once made every thermal pixel NaN."""
    values = np.array([[-np.inf, 0.0], [1.0, np.inf]], np.float32)
    out = check_decode(Kind.THERMAL, "x.thermal.npy", _npy(values), private_tmp)
    assert np.allclose(out[0].data, [[0, 0], [1, 0]])


def test_imu_values_beyond_float32_are_dropped(private_tmp: Path) -> None:
    """Found by fuzzing: a flipped exponent (1e300) became inf in the float32 window."""
    rows = np.random.default_rng(1).normal(size=(800, 6))
    rows[100, 2] = 1e300
    out = check_decode(Kind.IMU, "x.imu.npy", _npy(rows), private_tmp)
    assert [type(o) for o in out] == [Segment]
