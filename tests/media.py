"""Test media made with ffmpeg's lavfi sources and PIL, generated once per test session.

Use the session fixture ``media`` (tests/conftest.py): ``media.get("colour_mp4")``
makes the file on first use in a session temp folder and returns its path.
Every recipe is tiny (64x48 pixels, a few seconds) so the whole set takes seconds.

Colour clock: in the ``colour_*`` videos the frame shown at time t has
``R = 40*round(t)``, ``G = 255 - 40*round(t)``, ``B = 128``; :func:`second_of`
reads the nearest whole second back from decoded pixels, so a test can check
that the frame for a window comes from the right time. The colour changes at
half seconds, so a container that shifts timestamps by a frame (AVI does) does
not change the second read at a whole-second window boundary.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

from schemas import Kind, MediaItem

W, H = 64, 48
TONE_HZ = 440.0
COLOUR_CLOCK = "geq=r='40*floor(T+0.5)':g='255-40*floor(T+0.5)':b='128'"


def ffmpeg(*args: str) -> None:
    """Run ffmpeg with an argument list; raise with its stderr on failure."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{done.stderr.decode(errors='replace')}")


def colour_source(seconds: float, fps: int = 10) -> list[str]:
    return ["-f", "lavfi", "-i", f"nullsrc=s={W}x{H}:r={fps}:d={seconds},{COLOUR_CLOCK}"]


def tone_source(seconds: float, hz: float = TONE_HZ, rate: int = 44100) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=f={hz}:d={seconds}:sample_rate={rate}"]


def second_of(pixels: np.ndarray) -> int:
    """The whole second nearest to the time of a colour-clock frame (from its red channel)."""
    return int(round(float(np.median(pixels[..., 0])) / 40.0))


def dominant_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "10"]


def _colour_mp4(out: Path) -> None:
    ffmpeg(*colour_source(6), *tone_source(6), *H264, "-c:a", "aac", "-shortest", str(out))


def _colour_webm(out: Path) -> None:
    ffmpeg(*colour_source(4), *tone_source(4), "-c:v", "libvpx-vp9", "-deadline", "realtime",
           "-cpu-used", "8", "-c:a", "libopus", "-shortest", str(out))


def _colour_avi(out: Path) -> None:
    ffmpeg(*colour_source(4), *tone_source(4), "-c:v", "mpeg4", "-q:v", "2", "-c:a", "mp3",
           "-shortest", str(out))


def _colour_mkv(out: Path) -> None:
    ffmpeg(*colour_source(4), *tone_source(4), *H264, "-c:a", "flac", "-shortest", str(out))


def _long_gop_mp4(out: Path) -> None:  # keyframes only every 25 s: runs decode through
    ffmpeg(*colour_source(6), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-g", "250", "-sc_threshold", "0", str(out))


def _no_audio_mp4(out: Path) -> None:
    ffmpeg(*colour_source(4), *H264, str(out))


def _short_mp4(out: Path) -> None:  # 0.5 s, shorter than one window
    ffmpeg(*colour_source(0.5), *tone_source(0.5), *H264, "-c:a", "aac", "-shortest", str(out))


def _rotated_mp4(out: Path, source: Path) -> None:  # display matrix: shown 48 wide, 64 tall
    ffmpeg("-i", str(source), "-c", "copy", "-metadata:s:v", "rotate=90", str(out))


def _vfr_mkv(out: Path) -> None:
    # 10 fps for the first second, then one frame every 0.5 s, until 4 s.
    ffmpeg(*colour_source(4, fps=10), "-vf",
           "select='lt(t,1)+not(mod(n,5))',setpts='if(lt(N,10),N*0.1,1+(N-10)*0.5)/TB'",
           "-fps_mode", "vfr", *H264, str(out))


def _video_longer_than_frames_mp4(out: Path) -> None:  # soundtrack 4 s, video 2 s
    ffmpeg(*colour_source(2), *tone_source(4), *H264, "-c:a", "aac", str(out))


def _hour_mp4(out: Path) -> None:  # one hour at 1 fps, 64x48: cheap to make
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s={W}x{H}:r=1:d=3600", "-c:v", "libx264",
           "-preset", "ultrafast", "-g", "60", str(out))


def _audio(codec_args: list[str], seconds: float = 5.0) -> Callable[[Path], None]:
    def make(out: Path) -> None:
        ffmpeg(*tone_source(seconds), "-ac", "2", *codec_args, str(out))
    return make


def _audio_with_cover_mp3(out: Path) -> None:  # an mp3 whose "video" is cover art
    ffmpeg(*tone_source(3), "-f", "lavfi", "-i", f"color=c=red:s={W}x{H}:d=1", "-map", "0:a",
           "-map", "1:v", "-frames:v", "1", "-c:a", "libmp3lame", "-c:v", "mjpeg",
           "-disposition:v", "attached_pic", str(out))


def _truncated_mp4(out: Path, source: Path) -> None:
    data = source.read_bytes()
    out.write_bytes(data[: len(data) // 3])


def _truncated_faststart_mp4(out: Path) -> None:  # index intact, media data cut
    full = out.with_name("faststart_full.mp4")
    ffmpeg(*colour_source(6), *H264, "-movflags", "+faststart", str(full))
    data = full.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # ffprobe still reads it as 6 s


def _random_mp4(out: Path) -> None:
    out.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())


def _zero_streams_mkv(out: Path) -> None:  # ffmetadata text: a format ffprobe reads, 0 streams
    out.write_text(";FFMETADATA1\ntitle=nothing here\n")


RECIPES: dict[str, tuple[str, Callable[..., None], tuple[str, ...]]] = {
    # name: (file name, maker, names of media the maker reads)
    "colour_mp4": ("colour.mp4", _colour_mp4, ()),
    "colour_webm": ("colour.webm", _colour_webm, ()),
    "colour_avi": ("colour.avi", _colour_avi, ()),
    "colour_mkv": ("colour.mkv", _colour_mkv, ()),
    "long_gop_mp4": ("long_gop.mp4", _long_gop_mp4, ()),
    "no_audio_mp4": ("no_audio.mp4", _no_audio_mp4, ()),
    "short_mp4": ("short.mp4", _short_mp4, ()),
    "rotated_mp4": ("rotated.mp4", _rotated_mp4, ("no_audio_mp4",)),
    "vfr_mkv": ("vfr.mkv", _vfr_mkv, ()),
    "audio_outlasts_video_mp4": ("outlast.mp4", _video_longer_than_frames_mp4, ()),
    "hour_mp4": ("hour.mp4", _hour_mp4, ()),
    "tone_wav": ("tone.wav", _audio(["-c:a", "pcm_s16le"]), ()),
    "tone_flac": ("tone.flac", _audio(["-c:a", "flac"]), ()),
    "tone_mp3": ("tone.mp3", _audio(["-c:a", "libmp3lame"]), ()),
    "tone_m4a": ("tone.m4a", _audio(["-c:a", "aac"]), ()),
    "tone_in_mp4": ("tone_only.mp4", _audio(["-c:a", "aac"], 3.0), ()),
    "tone_short_wav": ("blip.wav", _audio(["-c:a", "pcm_s16le"], 0.01), ()),
    "cover_mp3": ("cover.mp3", _audio_with_cover_mp3, ()),
    "truncated_mp4": ("truncated.mp4", _truncated_mp4, ("colour_mp4",)),
    "truncated_faststart_mp4": ("truncated_faststart.mp4", _truncated_faststart_mp4, ()),
    "random_mp4": ("random.mp4", _random_mp4, ()),
    "zero_streams": ("nothing.ffmeta", _zero_streams_mkv, ()),
}


class MediaLibrary:
    """Makes each recipe once, on first use, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> Path:
        file_name, make, needs = RECIPES[name]
        out = self.root / file_name
        if not out.exists():
            inputs = [self.get(n) for n in needs]
            make(out, *inputs)
        return out


def media_item(path: Path, kind: Kind) -> MediaItem:
    """A MediaItem for a local test file (item_id = its name, enough for tests)."""
    return MediaItem(path.name, str(path.parent), path.name, path.stat().st_size, kind)
