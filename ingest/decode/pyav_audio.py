"""A file's first audio stream as float32 mono 16-kHz samples, decoded in this process.

The same contract as the ffmpeg process in ``audio.pcm_stream`` (``-ac 1 -ar 16000
-f f32le`` on a pipe): chunks of samples in order, nothing held beyond one chunk.
PyAV runs the same libraries (the decoder, then swresample to mono 16 kHz through
the format filter ffmpeg's command line also inserts), without a process per file:
``tests/test_decode_audio.py`` compares the two on every sample file.

As ffmpeg's command line does:

* a packet the decoder refuses is skipped, and the decode ends where the container
  can be read no further; but where more than ``MAX_ERROR_RATE`` of the packets fail
  (ffmpeg's ``-max_error_rate`` default) the file is refused;
* a stream whose sample rate, layout or format changes part way (broadcast TS
  switching 5.1 and stereo, files joined from parts) is resampled on, with a new
  resampler from the change;
* the time limit bounds the work for one chunk, not the whole file
  (``stream_stdout``'s rule): a slow consumer may hold the stream as long as it
  needs. It is checked between packets (one libav call cannot be interrupted in
  process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ingest.decode.base import DecodeError
from ingest.decode.pyav_frames import decode_packets

try:
    import av
except ImportError:  # the ffmpeg process stays usable without PyAV
    av = None

MAX_ERROR_RATE = 2 / 3  # of packets that fail to decode, above which the file is refused


def available() -> bool:
    return av is not None


def pcm_chunks(path: Path, rate: int, chunk_samples: int, timeout_s: float
               ) -> Iterator[np.ndarray]:
    """float32 mono chunks of about ``chunk_samples`` at ``rate`` Hz, in order."""
    clock = _ChunkClock(timeout_s)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise DecodeError(f"audio decode failed: {e}") from None
    with container:
        if not container.streams.audio:
            raise DecodeError("no audio stream to decode")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise DecodeError(f"no decoder for the audio codec {stream.codec_tag or '?'}")
        stream.codec_context.thread_count = 1  # decode workers are the parallelism
        try:
            yield from _chunks(_Resampled(rate), _frames(container, stream, clock),
                               chunk_samples, clock)
        except (av.FFmpegError, ValueError) as e:  # PyAV raises ValueError for odd frames
            raise DecodeError(f"audio decode failed: {e}") from None


class _ChunkClock:
    """The time limit of one chunk's work, restarted when a chunk is handed on."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.restart()

    def restart(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise DecodeError("audio decode timed out (MEDIABIND_FFMPEG_TIMEOUT_S)")


class _Resampled:
    """Frames to float32 mono samples at ``rate``; a new resampler wherever the input's
    format changes (one resampler takes one input format)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.resampler = None
        self.shape: tuple | None = None

    def __call__(self, frame) -> list[np.ndarray]:
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        out = []
        if shape != self.shape:
            out = self.flush()
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            self.shape = shape
        return out + [o.to_ndarray().reshape(-1) for o in self.resampler.resample(frame)]

    def flush(self) -> list[np.ndarray]:
        """What the current resampler still holds."""
        if self.resampler is None:
            return []
        return [o.to_ndarray().reshape(-1) for o in self.resampler.resample(None)]


def _chunks(resampled: _Resampled, frames: Iterator[object], chunk_samples: int,
            clock: _ChunkClock) -> Iterator[np.ndarray]:
    held: list[np.ndarray] = []
    count = 0
    for frame in frames:
        for samples in resampled(frame):
            held.append(samples)
            count += len(samples)
        if count >= chunk_samples:
            yield np.concatenate(held)
            clock.restart()  # the consumer's time is not the decoder's
            held, count = [], 0
    held += resampled.flush()
    if held:
        yield np.concatenate(held)


def _frames(container, stream, clock: _ChunkClock) -> Iterator[object]:
    good = bad = 0
    for packet, frames in decode_packets(container, stream, clock.check):
        if frames is None:
            bad += 1  # a damaged packet: skipped, as the ffmpeg command line does
            continue
        good += packet.size > 0
        yield from frames
    if bad and bad > MAX_ERROR_RATE * (good + bad):
        raise DecodeError(f"audio decode failed: {bad} of {good + bad} packets could not be "
                          f"decoded")
