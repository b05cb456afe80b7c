"""Paired data for ``mediabind bind`` tests and benchmarks, generated so the new signal
carries the image's content.

Each image is a smooth random colour field (a 2 x 2 grid of random colours,
bicubically upsampled). Its paired "sensor" sample is a multi-channel trace read
off the image: for each of two horizontal bands and each colour, the band's
mean value at every column, plus Gaussian noise. A new encoder that learns to
read the trace can therefore find its own image among others, which is what the
held-out retrieval checks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

BANDS = 2  # a 2 x 2 colour grid: few enough numbers for a small encoder to learn the map
CHANNELS = BANDS * 3  # one channel per band and colour
SIDE = 224


def colour_field(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    grid = rng.integers(0, 256, size=(BANDS, BANDS, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((side, side), Image.Resampling.BICUBIC))


def trace_of(image: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """float32 [samples=width, channels]: band means per column, scaled to [0,1], noisy."""
    bands = np.array_split(image.astype(np.float32) / 255.0, BANDS, axis=0)
    channels = [band[:, :, c].mean(axis=0) for band in bands for c in range(3)]
    trace = np.stack(channels, axis=1)
    return (trace + noise * rng.standard_normal(trace.shape)).astype(np.float32)


def write_tone(path: Path, frequency: float, seconds: float = 1.0, rate: int = 16_000) -> None:
    """A mono 16-bit WAV of one sine tone (the standard library writes it; no ffmpeg)."""
    import wave

    t = np.arange(int(seconds * rate)) / rate
    samples = (0.4 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def write_pairs(folder: Path, count: int, seed: int = 0, name: str = "radar",
                labels: bool = False, sounds: bool = False) -> Path:
    """``count`` (image, trace) pairs under ``folder`` and their ``pairs.csv``; with
    ``labels`` a caption per pair, with ``sounds`` a tone per pair (pitch from its colour)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        image = colour_field(rng)
        Image.fromarray(image).save(folder / "images" / f"{i:05d}.png")
        np.save(folder / "samples" / f"{i:05d}.{name}.npy", trace_of(image, rng))
        row = {"sample": f"samples/{i:05d}.{name}.npy", "image": f"images/{i:05d}.png"}
        if sounds:
            (folder / "sounds").mkdir(exist_ok=True)
            write_tone(folder / "sounds" / f"{i:05d}.wav", 200 + 4 * float(image.mean()))
            row["audio"] = f"sounds/{i:05d}.wav"
        if labels:
            row["label"] = "warm colours" if image[..., 0].mean() > image[..., 2].mean() else "cool colours"
        rows.append(row)
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
