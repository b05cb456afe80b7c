"""What a file is: its ``Kind`` and mime type, from its name, its first bytes, and a probe.

Detection runs these registries in order; the first that answers wins:

1. ``NAMING`` — the naming convention for sensor data, checked before plain
   extensions because ``scan.depth.png`` is a PNG that holds depth, not a photo:
   ``*.depth.png|npy|exr`` → depth, ``*.thermal.png|tif|tiff|jpg`` → thermal,
   ``*.imu.csv|npy|parquet`` → imu.
2. ``MAGIC`` — signatures in the first bytes, so a PNG named ``.mp4`` is still
   an image. Images (JPEG, PNG, GIF, WEBP, BMP, TIFF, HEIC/HEIF, AVIF) and
   unambiguous audio/video containers (WAV, FLAC, MP3, AIFF, AVI, FLV, MPEG-PS/TS,
   M4A) decide at once. Containers that may hold video or only audio (MP4/MOV
   generic brands, Matroska/WebM, Ogg, ASF) are *ambiguous*: the probe decides.
3. ``TEXT_EXTENSIONS`` — ``.txt .md .srt .vtt`` (not ``.json``: JSON is metadata,
   see ``ingest.sources``), refused when the first bytes hold NUL (binary).
4. ``MEDIA_EXTENSIONS`` — a media extension with no known signature: the probe decides.

The probe (``ingest.probe.probe``, imported lazily; in this process, or an ffprobe
process when ``probe_isolated``) decides ambiguous files:
a video stream with more than one frame → video; audio streams only → audio.
Anything else is unsupported: ``classify`` says why in ``Detection.reason``,
``detect_kind`` returns None.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import Kind

if TYPE_CHECKING:
    from ingest.probe import MediaInfo

HEAD_BYTES = 4096  # how many leading bytes callers should pass as ``head``


@dataclass(frozen=True, slots=True)
class Detection:
    """The answer of ``classify``: a kind and mime, or None and the reason why not."""

    kind: Kind | None
    mime: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Signature:
    """Leading bytes that identify a format. ``kind`` None: ambiguous, ffprobe decides."""

    name: str
    matches: Callable[[bytes], bool]
    kind: Kind | None
    mime: str


def _starts(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(prefixes)


def _riff(form: bytes) -> Callable[[bytes], bool]:
    return lambda head: head[:4] == b"RIFF" and head[8:12] == form


def _ftyp_brand(head: bytes) -> bytes:
    return head[8:12] if head[4:8] == b"ftyp" else b""


def _brand_in(*brands: bytes) -> Callable[[bytes], bool]:
    return lambda head: _ftyp_brand(head) in brands


def _mpeg_audio_frame(head: bytes) -> bool:
    # 11 sync bits; layer bits 01..11 (00 is reserved). ADTS AAC has layer 00 and is
    # matched separately. JPEG (FF D8) never reaches here: it is earlier in MAGIC.
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0


def _adts_frame(head: bytes) -> bool:
    return len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0


def _mpeg_ts(head: bytes) -> bool:
    # Transport stream packets are 188 bytes, each starting with the sync byte 0x47.
    return len(head) >= 377 and head[0] == head[188] == head[376] == 0x47


MAGIC: tuple[Signature, ...] = (
    Signature("JPEG", _starts(b"\xff\xd8\xff"), Kind.IMAGE, "image/jpeg"),
    Signature("PNG", _starts(b"\x89PNG\r\n\x1a\n"), Kind.IMAGE, "image/png"),
    Signature("GIF", _starts(b"GIF87a", b"GIF89a"), Kind.IMAGE, "image/gif"),
    Signature("WEBP", _riff(b"WEBP"), Kind.IMAGE, "image/webp"),
    Signature("BMP", lambda h: h[:2] == b"BM" and len(h) >= 26, Kind.IMAGE, "image/bmp"),
    Signature("TIFF", _starts(b"II*\x00", b"MM\x00*"), Kind.IMAGE, "image/tiff"),
    Signature("HEIC", _brand_in(b"heic", b"heix", b"hevc", b"heim", b"heis"), Kind.IMAGE,
              "image/heic"),
    Signature("AVIF", _brand_in(b"avif", b"avis"), Kind.IMAGE, "image/avif"),
    Signature("HEIF", _brand_in(b"mif1", b"msf1"), Kind.IMAGE, "image/heif"),
    Signature("M4A", _brand_in(b"M4A ", b"M4B ", b"M4P "), Kind.AUDIO, "audio/mp4"),
    Signature("QuickTime", _brand_in(b"qt  "), None, "video/quicktime"),
    Signature("MP4", lambda h: _ftyp_brand(h) != b"", None, "video/mp4"),
    Signature("WAV", _riff(b"WAVE"), Kind.AUDIO, "audio/wav"),
    Signature("AVI", _riff(b"AVI "), Kind.VIDEO, "video/x-msvideo"),
    Signature("FLAC", _starts(b"fLaC"), Kind.AUDIO, "audio/flac"),
    Signature("AIFF", lambda h: h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"),
              Kind.AUDIO, "audio/aiff"),
    Signature("Ogg", _starts(b"OggS"), None, "audio/ogg"),
    Signature("Matroska", _starts(b"\x1a\x45\xdf\xa3"), None, "video/x-matroska"),
    Signature("ASF", _starts(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"), None, "video/x-ms-asf"),
    Signature("FLV", _starts(b"FLV\x01"), Kind.VIDEO, "video/x-flv"),
    Signature("MPEG-PS", _starts(b"\x00\x00\x01\xba"), Kind.VIDEO, "video/mpeg"),
    Signature("MPEG-TS", _mpeg_ts, Kind.VIDEO, "video/mp2t"),
    Signature("MP3", _starts(b"ID3"), Kind.AUDIO, "audio/mpeg"),
    Signature("AAC", _adts_frame, Kind.AUDIO, "audio/aac"),
    Signature("MP3", _mpeg_audio_frame, Kind.AUDIO, "audio/mpeg"),
)

NAMING: dict[str, tuple[Kind, str]] = {
    ".depth.png": (Kind.DEPTH, "image/png"),
    ".depth.npy": (Kind.DEPTH, "application/x-npy"),
    ".depth.exr": (Kind.DEPTH, "image/x-exr"),
    ".thermal.png": (Kind.THERMAL, "image/png"),
    ".thermal.tif": (Kind.THERMAL, "image/tiff"),
    ".thermal.tiff": (Kind.THERMAL, "image/tiff"),
    ".thermal.jpg": (Kind.THERMAL, "image/jpeg"),
    ".imu.csv": (Kind.IMU, "text/csv"),
    ".imu.npy": (Kind.IMU, "application/x-npy"),
    ".imu.parquet": (Kind.IMU, "application/vnd.apache.parquet"),
}

TEXT_EXTENSIONS: dict[str, str] = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".srt": "application/x-subrip",
    ".vtt": "text/vtt",
}

# Extensions of media whose bytes matched no signature: ffprobe decides.
MEDIA_EXTENSIONS: dict[str, str] = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
    ".mkv": "video/x-matroska", ".webm": "video/webm", ".avi": "video/x-msvideo",
    ".wmv": "video/x-ms-wmv", ".flv": "video/x-flv", ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg", ".ts": "video/mp2t", ".3gp": "video/3gpp",
    ".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
    ".oga": "audio/ogg", ".opus": "audio/opus", ".m4a": "audio/mp4", ".aac": "audio/aac",
    ".wma": "audio/x-ms-wma", ".aiff": "audio/aiff", ".aif": "audio/aiff",
}


def detect_kind(name: str, head: bytes, path: Path | None = None,
                home: Path | None = None) -> Kind | None:
    """The kind of a file named ``name`` starting with ``head``; None if unsupported.

    ``path`` (a local copy of the bytes) lets ffprobe decide ambiguous files;
    ``home`` (``Settings.home``) adds the modality extensions registered there.
    """
    return classify(name, head, path, home=home).kind


def classify(name: str, head: bytes, path: Path | None = None, *,
             probe_timeout_s: float = 300.0, probe_isolated: bool = False,
             home: Path | None = None) -> Detection:
    """Kind, mime type, and, for unsupported files, the reason (see the module doc).

    Files following a registered extension's naming (``*.radar.npy``, under
    ``home``) are that extension's kind, checked first of all.
    """
    lower = name.lower()
    named = _by_extension(lower, home) or _by_naming(lower)
    if named is not None:
        return named
    signature = next((s for s in MAGIC if s.matches(head)), None)
    if signature is not None and signature.kind is not None:
        return Detection(signature.kind, signature.mime)
    if signature is not None:
        return _by_probe(path, signature.mime, signature.name, probe_timeout_s, probe_isolated)
    suffix = Path(lower).suffix
    if suffix in TEXT_EXTENSIONS:
        return _as_text(head, TEXT_EXTENSIONS[suffix])
    if suffix in MEDIA_EXTENSIONS:
        return _by_probe(path, MEDIA_EXTENSIONS[suffix], f"{suffix} file", probe_timeout_s,
                         probe_isolated)
    return Detection(None, "application/octet-stream",
                     f"unsupported file type (extension {suffix or 'none'!r}, "
                     f"first bytes {head[:8].hex() or 'none'})")


def _by_extension(lower_name: str, home: Path | None) -> Detection | None:
    from schemas.extension import active_specs, extension_kind

    for spec in active_specs(home).values():
        if spec.matches(lower_name):
            return Detection(extension_kind(spec), f"application/x-mediabind-{spec.name}")
    return None


def _by_naming(lower_name: str) -> Detection | None:
    for suffix, (kind, mime) in NAMING.items():
        if lower_name.endswith(suffix):
            return Detection(kind, mime)
    return None


def _as_text(head: bytes, mime: str) -> Detection:
    if b"\x00" in head:
        return Detection(None, mime, "unsupported file type: text extension but binary content")
    return Detection(Kind.TEXT, mime)


def _by_probe(path: Path | None, mime: str, what: str, timeout_s: float,
              isolated: bool) -> Detection:
    if path is None:
        return Detection(None, mime, f"unsupported file type: {what} needs a probe, no local file")
    from ingest.probe import ProbeError, probe  # lazy: only ambiguous containers need it

    try:
        info = probe(path, timeout_s, isolated=isolated)
    except ProbeError as exc:
        return Detection(None, mime, f"unsupported file type: the probe failed on {what}: {exc}")
    kind = kind_from_probe(info)
    if kind is None:
        return Detection(None, mime, f"unsupported file type: {what} has no moving video and no audio")
    return Detection(kind, _mime_for(kind, mime))


def kind_from_probe(info: MediaInfo) -> Kind | None:
    """The probe's verdict: a moving video stream → video; audio only → audio."""
    frames = _frame_count(info)
    if info.video is not None and (frames is None or frames > 1):
        return Kind.VIDEO  # probe already leaves cover art (attached_pic) out
    if info.has_audio:
        return Kind.AUDIO
    return None


def _frame_count(info: MediaInfo) -> int | None:
    # Matroska/WebM headers hold no frame count: duration x rate estimates it.
    video = info.video
    if video is None or video.frames is not None:
        return None if video is None else video.frames
    duration = video.duration_s or info.duration_s
    return round(duration * video.fps) if duration and video.fps else None


def _mime_for(kind: Kind, container_mime: str) -> str:
    # An audio-only MP4/Matroska/Ogg is served as audio, a video Ogg as video.
    major = "video" if kind is Kind.VIDEO else "audio"
    return f"{major}/{container_mime.split('/', 1)[1]}"


def registry_fingerprint(home: Path | None = None) -> str:
    """A short hash of what detection knows (kinds, names, signatures, extensions), then
    ``|name@version`` for each modality extension registered under ``home``.

    The ledger stores it with each refusal of an unknown kind: once the registry
    changes (a new modality or file convention), those files are read again. The
    extension identities also settle the items of extension kinds: a file embedded
    by ``radar@v1`` is embedded again once ``radar@v2`` is active.
    """
    from schemas.extension import active_specs

    extensions = [(s.name, s.version, s.patterns) for s in active_specs(home).values()]
    return _builtin_fingerprint(tuple(extensions)) + "".join(
        f"|{name}@{version}" for name, version, _p in extensions)


@functools.cache
def _builtin_fingerprint(extensions: tuple) -> str:
    import hashlib

    known = [sorted(k.value for k in Kind), sorted(NAMING), [s.name for s in MAGIC],
             sorted(TEXT_EXTENSIONS), sorted(MEDIA_EXTENSIONS)]
    if extensions:  # without any, the fingerprint stays what earlier runs recorded
        known.append(list(extensions))
    return hashlib.sha256(repr(known).encode()).hexdigest()[:16]
