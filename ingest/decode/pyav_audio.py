"""A file's first audio stream as float32 mono 16-kHz samples, decoded in this process.

The same contract as the ffmpeg process in ``audio.pcm_stream`` (``-ac 1 -ar 16000
-f f32le`` on a pipe): chunks of samples in order, nothing held beyond one chunk.
PyAV runs the same libraries (the decoder, then swresample to mono 16 kHz through
the format filter ffmpeg's command line also inserts), without a process per file:
``tests/test_decode_audio.py`` compares the two on every sample file.

As ffmpeg's command line does, a packet the decoder refuses is skipped, and the
decode ends where the container can be read no further. The time limit is checked
between packets (a single libav call cannot be interrupted in process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ingest.decode.base import DecodeError

try:
    import av
except ImportError:  # the ffmpeg process stays usable without PyAV
    av = None


def available() -> bool:
    return av is not None


def pcm_chunks(path: Path, rate: int, chunk_samples: int, timeout_s: float
               ) -> Iterator[np.ndarray]:
    """float32 mono chunks of about ``chunk_samples`` at ``rate`` Hz, in order."""
    deadline = time.monotonic() + timeout_s
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
            yield from _resampled(container, stream, rate, chunk_samples, deadline)
        except av.FFmpegError as e:
            raise DecodeError(f"audio decode failed: {e}") from None


def _resampled(container, stream, rate: int, chunk_samples: int, deadline: float
               ) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    held: list[np.ndarray] = []
    count = 0
    for frame in _frames(container, stream, deadline):
        for out in resampler.resample(frame):
            held.append(out.to_ndarray().reshape(-1))
            count += len(held[-1])
        if count >= chunk_samples:
            yield np.concatenate(held)
            held, count = [], 0
    for out in resampler.resample(None):  # what the resampler still holds
        held.append(out.to_ndarray().reshape(-1))
    if held:
        yield np.concatenate(held)


def _frames(container, stream, deadline: float) -> Iterator[object]:
    packets = container.demux(stream)
    while True:
        if time.monotonic() > deadline:
            raise DecodeError("audio decode timed out (MEDIABIND_FFMPEG_TIMEOUT_S)")
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            return  # the container cannot be read further: what came is what there is
        try:
            yield from packet.decode()  # the last, empty packet flushes the decoder
        except av.FFmpegError:
            continue  # a damaged packet: skipped, as the ffmpeg command line does
