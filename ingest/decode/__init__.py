"""Decoders: one per file kind, looked up in ``DECODERS`` (no if/elif on kinds).

``decode_item`` is the one entry point: it yields the item's segments in the
layout ``schemas.MODALITIES[m].decoded`` gives, index counting from 0 per
modality; a video yields vision clips and then its soundtrack's audio windows.
Any failure becomes a ``Rejected`` (stage ``probe`` when the probe cannot read the
file, else ``decode``) after the segments already yielded; nothing is raised.
The file-level point is not made here: the pipeline averages segment vectors.

Text chunks need a token counter; the pipeline passes the real BPE counter
(ingest cannot import embed_workers), see ``ingest.decode.text``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.decode.audio import decode_audio
from ingest.decode.base import DecodeError, DecodeJob, Decoder, TokenCounter
from ingest.decode.extension import decode_extension
from ingest.decode.image import decode_image
from ingest.decode.sensors import decode_depth, decode_imu, decode_thermal
from ingest.decode.text import decode_text
from ingest.decode.video import decode_video
from ingest.probe import ProbeError
from schemas import Kind, MediaItem, Rejected, Segment, SegmentPolicy, Settings, Stage, get_settings
from schemas.extension import is_extension, read_spec, version_dir

DECODERS: dict[Kind, Decoder] = {
    Kind.VIDEO: decode_video,
    Kind.AUDIO: decode_audio,
    Kind.IMAGE: decode_image,
    Kind.TEXT: decode_text,
    Kind.DEPTH: decode_depth,
    Kind.THERMAL: decode_thermal,
    Kind.IMU: decode_imu,
}


def extension_decoder(kind, settings: Settings) -> Decoder | None:
    """The decoder of a modality extension's files (its spec names layout and geometry)."""
    if not is_extension(kind):
        return None
    folder = version_dir(settings.home, str(kind), kind.version)
    return lambda job: decode_extension(job, _usable(read_spec(folder), job.settings), kind)


def _usable(spec, settings: Settings):
    """An extension trained against another base model lives in another space."""
    if spec.base_preset != settings.preset:
        raise DecodeError(f"extension {spec.name!r} was trained against preset "
                          f"{spec.base_preset} ({spec.base_model_id}); this run embeds with "
                          f"{settings.preset}: retrain it for this model to ingest its files")
    return spec


def decode_item(item: MediaItem, path: Path, policy: SegmentPolicy,
                settings: Settings | None = None,
                count_tokens: TokenCounter | None = None) -> Iterator[Segment | Rejected]:
    """Segments of one item, or a Rejected (after any segments made before the failure)."""
    job = DecodeJob(item, Path(path), policy, settings or get_settings(), count_tokens)
    decoder = DECODERS.get(item.kind) or extension_decoder(item.kind, job.settings)
    if decoder is None:
        yield Rejected(item.item_id, item.source_uri, Stage.DECODE,
                       f"no decoder for kind {item.kind!r}")
        return
    try:
        yield from decoder(job)
    except Exception as e:  # noqa: BLE001 - a bad file must never stop the stream
        yield rejected(item, e, job.path)


def rejected(item: MediaItem, error: Exception, path: Path | None = None) -> Rejected:
    """The Rejected record for an error raised while decoding ``item``.

    ffmpeg and PIL name the file they opened, which for archive members is a
    temporary spool file; the reason names the member the user knows instead.
    """
    stage = Stage.PROBE if isinstance(error, ProbeError) else Stage.DECODE
    reason = str(error) if isinstance(error, DecodeError | ProbeError) \
        else f"{type(error).__name__}: {error}"
    if path is not None and str(path) != item.source_uri:
        reason = reason.replace(str(path), item.member).replace(path.name, item.member)
    return Rejected(item.item_id, item.source_uri, stage, reason)


__all__ = ["DECODERS", "DecodeError", "DecodeJob", "decode_item"]
