"""A small generated archive, ingested once per test session with the tiny preset.

The target video's soundtrack has three distinct 2-s windows (see
``make_soundtrack``); the query is the 2–4 s window cut out of the same 16-kHz
PCM source with ffmpeg. With random tiny weights only identical inputs give identical
vectors, so "the exact window finds its video at 2 s" is the reliable proof
(nothing here relies on semantic similarity).
"""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_workers.pipeline import run_ingest
from schemas import Settings
from search.store import open_store

PRESET = "imagebind_tiny"
TEXT = "Birds sing at dawn over the sea."
TARGET = "clips/target.mkv"
WINDOW_START_S = 2.0  # where the query window sits in the target's soundtrack


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=60)


@dataclass(frozen=True)
class Ingested:
    home: Path
    media: Path
    queries: Path
    settings: Settings

    def query(self, name: str) -> Path:
        return self.queries / name


def settings_for(home: Path, **overrides: object) -> Settings:
    base = {"home": home, "preset": PRESET, "device": "cpu", "dtype": "float32",
            "store": "edge", "video_crops": 1}
    return Settings(**(base | overrides))


def make_soundtrack(path: Path) -> None:
    """6 s of 16-kHz mono PCM in three 2-s windows: a 300 Hz tone; 1 s of silence then
    noise (the query window); noise. The tiny random audio tower hardly tells pure tones
    apart (cosine ~0.9999), so the query window differs from every other window in its
    energy over time, the thing that tower does see (cosine <= ~0.99)."""
    sources = ["sine=frequency=300:duration=2:sample_rate=16000",
               "aevalsrc=0:duration=1:sample_rate=16000",
               "anoisesrc=duration=1:sample_rate=16000:seed=7:amplitude=0.3",
               "anoisesrc=duration=2:sample_rate=16000:seed=11:amplitude=0.3"]
    inputs = [arg for src in sources for arg in ("-f", "lavfi", "-i", src)]
    ffmpeg(*inputs, "-filter_complex", "[0:a][1:a][2:a][3:a]concat=n=4:v=0:a=1",
           "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(path))


def make_media(media: Path, queries: Path) -> None:
    for sub in ("clips", "sounds", "images", "notes"):
        (media / sub).mkdir(parents=True, exist_ok=True)
    queries.mkdir(parents=True, exist_ok=True)
    soundtrack = queries / "soundtrack.wav"
    make_soundtrack(soundtrack)
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=6", "-i", str(soundtrack),
           "-c:v", "mpeg4", "-c:a", "copy", "-shortest", str(media / TARGET))
    ffmpeg("-f", "lavfi", "-i", "smptebars=size=64x48:rate=5:duration=4", "-f", "lavfi",
           "-i", "sine=frequency=700:duration=4:sample_rate=16000", "-c:v", "mpeg4",
           "-c:a", "pcm_s16le", "-shortest", str(media / "clips/other.mkv"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=2500:duration=4:sample_rate=16000",
           str(media / "sounds/hum.wav"))
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=48x40", "-frames:v", "1",
           str(media / "images/red.png"))
    (media / "notes/dawn.txt").write_text(TEXT)
    cut_window(soundtrack, queries / "window.wav", WINDOW_START_S, 2.0)


def cut_window(source: Path, out: Path, start_s: float, length_s: float) -> None:
    """The exact samples of [start, start + length) as a wav (input seek is sample-exact on PCM)."""
    ffmpeg("-ss", f"{start_s}", "-t", f"{length_s}", "-i", str(source), "-c:a", "pcm_s16le",
           str(out))


def read_wav(path: Path) -> np.ndarray:
    """16-bit PCM → float32 in [-1, 1), the scaling ffmpeg's f32le output uses."""
    with wave.open(str(path)) as wav:
        raw = wav.readframes(wav.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


_CACHE: dict[str, Ingested] = {}


def ingested_archive(root: Path) -> Ingested:
    """Generate and ingest the archive once per session (root: a session tmp dir)."""
    if "archive" not in _CACHE:
        media, queries = root / "media", root / "queries"
        make_media(media, queries)
        settings = settings_for(root / "home")
        with open_store(settings) as store:
            from embed_workers.executors import preset_model_id

            store.ensure_collection(preset_model_id(PRESET), settings.policy)
            report = run_ingest(str(media), store, settings=settings, executor="local")
        assert not report.rejected, report.rejected
        _CACHE["archive"] = Ingested(root / "home", media, queries, settings)
    return _CACHE["archive"]
