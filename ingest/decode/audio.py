"""Audio (and video soundtracks) → float32 mono 16 kHz windows.

The decoder (``audio_decoder``: PyAV in this process, ``pyav_audio``, or an ffmpeg
process with ``-ac 1 -ar 16000 -f f32le`` on a pipe) streams the samples, which are
cut into the windows as they arrive, so an hour of audio (230 MB as float32) is
never held at once: memory stays at about one window plus one read chunk.

Which decoder, measured both ways (``benchmarks/decode.py`` prints the soundtrack's
CPU each way, ``benchmarks/scale.py --audio-decoders auto,ffmpeg`` the Ray executor's
throughput): in process the same samples cost a fraction of the CPU, but the loop over
frames holds the GIL. A process that decodes one file at a time (a Ray decode
actor) is faster with PyAV; where several decode threads share one interpreter
(the local executor) the ffmpeg process was faster, as it runs beside them.

Differences from the reference loader, on purpose:

* Channels are averaged (``-ac 1``); the reference's Kaldi fbank reads only the
  first channel of a stereo file.
* Resampling is ffmpeg's (swresample), not torchaudio's sinc resampler.
* A window keeps its true samples (a short file gives a short window; the
  fbank in preprocessing pads to 204 frames as the reference does), except that
  a window is zero-padded to at least ``MIN_SAMPLES`` (400 samples = one 25 ms
  fbank frame), below which no fbank exists at all.
* A video's soundtrack uses the video's windows; windows that start after the
  soundtrack has ended give no audio segment.
"""

from __future__ import annotations

from collections.abc import Iterator

import ffmpeg
import numpy as np

from ingest.decode import pyav_audio
from ingest.decode.base import DecodeError, DecodeJob, bounded_windows
from ingest.ffmpeg_run import FFMPEG_QUIET, FFmpegError, stream_stdout
from ingest.probe import MediaInfo, probe_for, probe_isolated
from schemas import Kind, Modality, Segment, Settings

SAMPLE_RATE = 16_000
MIN_SAMPLES = 400  # one 25-ms fbank frame at 16 kHz
CHUNK_SAMPLES = 4 * SAMPLE_RATE  # read granularity of the pipe


def decode_audio(job: DecodeJob) -> Iterator[Segment]:
    """An audio file: probe it, cut its whole duration into windows."""
    info = probe_for(job.path, job.settings)  # ProbeError → stage probe
    yield from decode_probed_audio(job, info)


def decode_probed_audio(job: DecodeJob, info: MediaInfo,
                        spans: list[tuple[float, float]] | None = None) -> Iterator[Segment]:
    """Audio segments of a probed file, over ``spans`` or its own duration's windows."""
    if info.audio is None:
        raise DecodeError(f"no audio stream in {info.format_name or 'file'} "
                          f"({info.stream_count} streams)")
    own_windows = spans is None  # an audio file, not a video's soundtrack
    if spans is None:
        try:
            spans = bounded_windows(info.duration_s, job.policy, job.settings)
        except ValueError as e:
            raise DecodeError(f"{e} (the probe reports no usable duration)") from None
    # A video's soundtrack keeps the item's kind (video): the payload tells them apart.
    kind = job.item.kind if job.item.kind in (Kind.VIDEO, Kind.AUDIO) else Kind.AUDIO
    backend = audio_decoder(job.settings)
    samples = pcm_stream(job, backend)
    made = 0
    for made, (start, end, clip) in enumerate(cut_windows(samples, spans), start=1):
        yield job.segment(Modality.AUDIO, made - 1, start, end, clip, kind=kind,
                          audio_decoder=backend)
    if made == 0 and own_windows:  # found by fuzzing: a damaged m4a that decodes to nothing
        raise DecodeError(f"audio stream decoded to no samples although the probe reports "
                          f"{info.duration_s} s (corrupt data?)")


def audio_decoder(settings: Settings, decoders_here: int | None = None) -> str:
    """``pyav`` or ``ffmpeg``: what decodes audio under ``settings`` in a process where
    ``decoders_here`` files are decoded at once (default: ``decode_workers``, the local
    executor's decode threads; a Ray decode actor passes 1).

    ``MEDIABIND_AUDIO_DECODER=auto`` takes PyAV where one file is decoded at a time and
    an ffmpeg process beside several decode threads (see the module doc), and the
    process wherever probes run in ffprobe (``MEDIABIND_VIDEO_DECODER=ffmpeg``, or no
    PyAV installed).
    """
    choice = settings.audio_decoder
    if choice == "pyav" and not pyav_audio.available():
        raise DecodeError("MEDIABIND_AUDIO_DECODER=pyav, but PyAV (the av package) is not "
                          "installed; set it to auto or ffmpeg")
    if choice != "auto":
        return choice
    if probe_isolated(settings) or not pyav_audio.available():
        return "ffmpeg"
    here = settings.decode_workers if decoders_here is None else decoders_here
    return "pyav" if here == 1 else "ffmpeg"


def pcm_stream(job: DecodeJob, backend: str | None = None) -> Iterator[np.ndarray]:
    """The first audio stream as float32 mono 16 kHz chunks, from ``backend`` (default
    ``audio_decoder``'s choice): this process (``pyav``) or an ffmpeg process."""
    if (backend or audio_decoder(job.settings)) == "pyav":
        return pyav_audio.pcm_chunks(job.path, SAMPLE_RATE, CHUNK_SAMPLES,
                                     job.settings.ffmpeg_timeout_s)
    return ffmpeg_pcm_stream(job)


def ffmpeg_pcm_stream(job: DecodeJob) -> Iterator[np.ndarray]:
    """The first audio stream as float32 mono 16 kHz chunks, from an ffmpeg process."""
    out = ffmpeg.input(str(job.path))["a:0"].output(
        "pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE)
    args = out.global_args(*FFMPEG_QUIET).compile()
    try:
        for chunk in stream_stdout(args, CHUNK_SAMPLES * 4, job.settings.ffmpeg_timeout_s):
            usable = len(chunk) - len(chunk) % 4  # a torn last sample at EOF is dropped
            yield np.frombuffer(chunk[:usable], np.float32)
    except FFmpegError as e:
        raise DecodeError(f"audio decode failed: {e}") from None


def cut_windows(chunks: Iterator[np.ndarray], spans: list[tuple[float, float]]
                ) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start, end, samples) per window, holding only what the current window needs."""
    buffer, buffer_start, ended = np.zeros(0, np.float32), 0, False
    for start, end in spans:
        a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        while buffer_start + len(buffer) < b and not ended:
            chunk = next(chunks, None)
            ended = chunk is None
            if chunk is not None:
                buffer = np.concatenate([buffer, chunk])
        drop = min(max(a - buffer_start, 0), len(buffer))
        buffer, buffer_start = buffer[drop:], buffer_start + drop
        if buffer_start > a or a >= buffer_start + len(buffer):
            return  # the sound ended before this window starts
        yield start, end, pad_to_min(buffer[: b - a].copy())


def pad_to_min(clip: np.ndarray) -> np.ndarray:
    """Zero-pad to MIN_SAMPLES: shorter clips have no fbank frame at all."""
    if len(clip) >= MIN_SAMPLES:
        return clip
    return np.concatenate([clip, np.zeros(MIN_SAMPLES - len(clip), np.float32)])
