"""Query building: analysts' inputs → one unit vector in the joint space.

A query input is a file path (``str``/``Path``), raw file ``bytes``, a numpy
array in the decoded layout (``schemas.MODALITIES[m].decoded``), or, for
``text=``, the text itself. Files and bytes take ingestion's own route from
bytes to segments (``ingest.sources.read_local_file``: safety checks, sha256,
kind; then ``decode_events``), so a query is cut and preprocessed exactly like
the stored segments; arrays skip decoding because they already are what a
decoder yields, and audio arrays are cut by ingestion's window cutter.

Fusion follows the ImageBind paper: every input is L2-normalised, weighted
(1.0 by default), summed and renormalised. An input of several segments (a
10-s audio clip) is first the renormalised mean of its segment vectors, the
same rule as a stored file-level point.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from schemas import Kind, Modality, Rejected, Segment, Settings
from schemas.extension import active_specs, extension_kind, is_extension

EMBED_DIM = 1024
ZERO_NORM = 1e-6  # below this a combined vector points nowhere: refuse it
QUERY_ITEM_ID = "query"

QueryValue = str | Path | bytes | bytearray | memoryview | np.ndarray


class QueryEncoder(Protocol):
    """The part of ``embed_workers.encoder.Encoder`` a query needs."""

    model_id: str

    def encode_segments(self, segments: Sequence[Segment]) -> np.ndarray: ...


# --- the query keywords ---------------------------------------------------------------

ArrayCheck = Callable[[np.ndarray], str | None]  # a problem with the array, or None


def _image_problem(a: np.ndarray) -> str | None:
    ok = a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    return None if ok else "an image array is uint8 [H,W,3] RGB"


def _video_problem(a: np.ndarray) -> str | None:
    ok = a.dtype == np.uint8 and a.ndim == 4 and a.shape[0] == 2 and a.shape[3] == 3
    return None if ok else "a video clip array is uint8 [2,H,W,3] (first and last frame)"


def _audio_problem(a: np.ndarray) -> str | None:
    ok = np.issubdtype(a.dtype, np.floating) and a.ndim == 1 and a.size > 0
    return None if ok else "an audio array is float32 [samples], mono at 16 kHz"


def _plane_problem(a: np.ndarray) -> str | None:
    ok = np.issubdtype(a.dtype, np.floating) and a.ndim == 2 and min(a.shape) > 0
    return None if ok else "a depth/thermal array is float32 [H,W]"


def _imu_problem(a: np.ndarray) -> str | None:
    ok = np.issubdtype(a.dtype, np.floating) and a.ndim == 2 and a.shape[0] == 6
    return None if ok else "an IMU array is float32 [6,T] (accelerometer xyz, gyroscope xyz)"


@dataclass(frozen=True, slots=True)
class QueryKeyword:
    """One keyword of ``MediaSearch.search``: the modality it queries and what it accepts."""

    name: str
    modality: Modality
    kinds: tuple[Kind, ...]  # file kinds accepted as input (audio= takes a video's soundtrack)
    array_problem: ArrayCheck | None  # None: arrays are not accepted
    text_is_value: bool = False  # a str is the query itself, not a path


KEYWORDS: dict[str, QueryKeyword] = {
    k.name: k
    for k in (
        QueryKeyword("text", Modality.TEXT, (Kind.TEXT,), None, text_is_value=True),
        QueryKeyword("image", Modality.VISION, (Kind.IMAGE,), _image_problem),
        QueryKeyword("video", Modality.VISION, (Kind.VIDEO,), _video_problem),
        QueryKeyword("audio", Modality.AUDIO, (Kind.AUDIO, Kind.VIDEO), _audio_problem),
        QueryKeyword("depth", Modality.DEPTH, (Kind.DEPTH,), _plane_problem),
        QueryKeyword("thermal", Modality.THERMAL, (Kind.THERMAL,), _plane_problem),
        QueryKeyword("imu", Modality.IMU, (Kind.IMU,), _imu_problem),
    )
}
VECTOR_KEYWORD = "vector"


def keyword_of_kind(kind: Kind) -> str | None:
    """The keyword a file of ``kind`` is a query input for (a video: its picture, as
    ``video=``); None for a kind no keyword takes. An extension's kind is its keyword."""
    if is_extension(kind):
        return str(kind)
    return next((k.name for k in KEYWORDS.values() if k.kinds[0] is kind), None)


def keyword_for_file(path: Path, home: Path | None = None) -> str:
    """The keyword a query file goes in by what it is (an upload on the search page):
    its kind, detected as ingestion detects it; ValueError for a file of no kind."""
    from ingest.kinds import HEAD_BYTES, detect_kind

    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    kind = detect_kind(path.name, head, path, home)
    keyword = keyword_of_kind(kind) if kind is not None else None
    if keyword is None:
        raise ValueError(f"{path.name!r} is not a media kind mediabind reads "
                         f"(it takes {', '.join(k.value for k in Kind)} files)")
    return keyword
ALL_KEYWORDS = (*KEYWORDS, VECTOR_KEYWORD)


def _series_or_map_problem(a: np.ndarray) -> str | None:
    ok = np.issubdtype(a.dtype, np.floating) and a.ndim == 2 and min(a.shape) > 0
    return None if ok else ("an extension's array is float32 [channels, samples] (series) or "
                            "[H,W] (map), in its geometry")


def keywords_for(home: Path | None) -> dict[str, QueryKeyword]:
    """The built-in keywords, plus one per modality extension registered under ``home``
    (``search(inputs={"radar": path})``): a file, its bytes, or an array of its views."""
    found = dict(KEYWORDS)
    for name, extension in active_specs(home).items():
        kind = extension_kind(extension)
        found[name] = QueryKeyword(name, kind, (kind,), _series_or_map_problem)
    return found


@dataclass(frozen=True, slots=True)
class QueryPart:
    """One input of a query with its weight."""

    keyword: str
    value: Any
    weight: float = 1.0
    spec: QueryKeyword | None = None  # None: a raw vector

    @property
    def modality(self) -> Modality | None:
        spec = self.spec or KEYWORDS.get(self.keyword)
        return None if spec is None else spec.modality


# --- collecting and validating the inputs ------------------------------------------------


def collect_parts(inputs: Mapping[str, Any], weights: Mapping[str, float] | None = None,
                  *, role: str = "query",
                  keywords: Mapping[str, QueryKeyword] = KEYWORDS) -> list[QueryPart]:
    """The non-None inputs as weighted parts; a list gives one part per element.

    ``keywords``: what may be queried (``keywords_for``: with the modality extensions)."""
    allowed = (*keywords, VECTOR_KEYWORD)
    unknown = set(inputs) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {role} input(s) {sorted(unknown)}; use {', '.join(allowed)}")
    given = {k: v for k, v in inputs.items() if v is not None}
    checked = check_weights(weights or {}, given)
    parts = [QueryPart(k, v, checked.get(k, 1.0), keywords.get(k))
             for k, vs in given.items() for v in _as_list(k, vs)]
    if not parts:
        raise ValueError(f"empty {role}: give at least one of {', '.join(allowed)}")
    return parts


def _as_list(keyword: str, value: Any) -> list[Any]:
    if keyword == VECTOR_KEYWORD and not isinstance(value, list | tuple):
        return [value]  # a vector given as a plain sequence of floats is one vector
    if keyword == VECTOR_KEYWORD and value and all(_is_number(x) for x in value):
        return [value]
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise ValueError(f"{keyword}=: an empty list is not a query")
    return values


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool)


def check_weights(weights: Mapping[str, float], given: Mapping[str, Any]) -> dict[str, float]:
    """Weights are finite, positive, and name an input that was given."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights is a dict keyword -> float, got {type(weights).__name__}")
    for key, weight in weights.items():
        if key not in given:
            raise ValueError(f"weight for {key!r}, but no {key}= input was given "
                             f"(inputs: {', '.join(given) or 'none'})")
        if not _is_number(weight) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight for {key!r} must be a finite number > 0, got {weight!r}")
    return {k: float(w) for k, w in weights.items()}


def check_vector(value: Any, what: str = "vector=") -> np.ndarray:
    """A raw query vector: 1024 finite numbers, not all zero; returned unit-norm."""
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {EMBED_DIM} numbers, got {type(value).__name__}") from None
    if vector.shape != (EMBED_DIM,):
        raise ValueError(f"{what} must have shape ({EMBED_DIM},), got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} contains NaN or infinity")
    return unit(vector, what)


def check_array(keyword: QueryKeyword, array: np.ndarray, max_bytes: int) -> np.ndarray:
    """An array input in its keyword's decoded layout, finite, within the size cap."""
    if keyword.array_problem is None:
        raise ValueError(f"{keyword.name}= does not take arrays; give a str or a file path")
    problem = keyword.array_problem(array)
    if problem:
        raise ValueError(f"{keyword.name}=: {problem}; got {array.dtype} {array.shape}")
    if array.nbytes > max_bytes:
        raise ValueError(f"{keyword.name}= array is {array.nbytes} bytes; the cap is {max_bytes} "
                         "(MEDIABIND_MAX_QUERY_BYTES)")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{keyword.name}= array contains NaN or infinity")
    return array


# --- vector arithmetic ---------------------------------------------------------------------


def unit(vector: np.ndarray, what: str = "query") -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm < ZERO_NORM:
        raise ValueError(f"{what} is a zero vector (its inputs cancel out); it points nowhere")
    return (vector / norm).astype(np.float32)


def mean_unit(vectors: np.ndarray, what: str = "query") -> np.ndarray:
    """Renormalised mean of unit vectors: one vector for a multi-segment input."""
    return unit(np.asarray(vectors, dtype=np.float32).mean(axis=0), what)


def fuse(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The paper's embedding arithmetic: normalise each, weight, sum, renormalise."""
    total = sum(w * unit(v) for v, w in zip(vectors, weights, strict=True))
    return unit(np.asarray(total), "the weighted sum of the query inputs")


def subtract_negative(query: np.ndarray, negative: np.ndarray, weight: float) -> np.ndarray:
    """q − λ·n, renormalised: moves the query away from what the negative shows."""
    if not _is_number(weight) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"negative_weight must be a finite number > 0, got {weight!r}")
    return unit(unit(query) - weight * unit(negative), "the query minus its negative")


# --- turning one input into segments -----------------------------------------------------


def input_segments(part: QueryPart, settings: Settings,
                   count_tokens: Callable[[str], int] | None = None) -> list[Segment]:
    """The model-ready segments of one query input, by the same decode as ingestion."""
    keyword = part.spec or KEYWORDS[part.keyword]
    value = part.value
    if isinstance(value, np.ndarray):
        return array_segments(keyword, check_array(keyword, value, settings.max_query_bytes),
                              settings)
    if isinstance(value, str) and keyword.text_is_value:
        return text_segments(value, settings, count_tokens)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes_segments(keyword, bytes(value), settings, count_tokens)
    if isinstance(value, str | Path):
        return file_segments(keyword, Path(value), settings, count_tokens)
    raise ValueError(f"{part.keyword}= takes {_accepted(keyword)}, got {type(value).__name__}")


def _accepted(keyword: QueryKeyword) -> str:
    first = "a str (the text) or a Path" if keyword.text_is_value else "a path (str or Path)"
    arrays = ", or a numpy array" if keyword.array_problem else ""
    return f"{first}, bytes{arrays}"


def text_segments(text: str, settings: Settings,
                  count_tokens: Callable[[str], int] | None) -> list[Segment]:
    """A short text is one chunk; a longer one is chunked by the ingestion decoder, not truncated."""
    if not text.strip():
        raise ValueError("text=: an empty string is not a query")
    data = text.encode()
    if len(data) > settings.max_query_bytes:  # before tokenising: BPE on 64 MB takes ~10 s
        raise ValueError(f"text= is longer than the {settings.max_query_bytes}-byte cap")
    if count_tokens is not None and count_tokens(text) > _max_text_tokens():
        return bytes_segments(KEYWORDS["text"], data, settings, count_tokens)
    return [Segment(QUERY_ITEM_ID, Modality.TEXT, Kind.TEXT, 0, None, None, text)]


def _max_text_tokens() -> int:
    from embed_workers.model.tokenizer import MAX_TEXT_TOKENS

    return MAX_TEXT_TOKENS


def array_segments(keyword: QueryKeyword, array: np.ndarray, settings: Settings) -> list[Segment]:
    """Arrays are already decoded; long audio is cut into the ingestion windows."""
    kind = keyword.kinds[0]
    if keyword.modality is Modality.AUDIO:
        windows = audio_windows(array.astype(np.float32, copy=False), settings)
    else:
        windows = [array]
    return [Segment(QUERY_ITEM_ID, keyword.modality, kind, i, None, None, w)
            for i, w in enumerate(windows)]


def audio_windows(samples: np.ndarray, settings: Settings) -> list[np.ndarray]:
    """The windows ingestion cuts from this waveform (16 kHz mono): its spans
    (``bounded_windows``) and its cutter (``cut_windows``: a clip too short for one fbank
    frame is padded, as in ingestion)."""
    from ingest.decode.audio import SAMPLE_RATE, cut_windows
    from ingest.decode.base import DecodeError, bounded_windows

    try:
        spans = bounded_windows(samples.size / SAMPLE_RATE, settings.policy, settings)
    except (DecodeError, ValueError) as exc:
        raise ValueError(f"audio=: {exc}") from None
    return [clip for _, _, clip in cut_windows(iter([samples]), spans)]


def bytes_segments(keyword: QueryKeyword, data: bytes, settings: Settings,
                   count_tokens: Callable[[str], int] | None) -> list[Segment]:
    """Raw file bytes: written to a temp file, then decoded like any file."""
    if len(data) > settings.max_query_bytes:
        raise ValueError(f"{keyword.name}= bytes are {len(data)} long; the cap is "
                         f"{settings.max_query_bytes} (MEDIABIND_MAX_QUERY_BYTES)")
    with tempfile.TemporaryDirectory(prefix="mediabind-query-") as tmp:
        path = Path(tmp) / bytes_file_name(keyword, data)
        path.write_bytes(data)
        return file_segments(keyword, path, settings, count_tokens)


# Leading bytes of the sensor formats, for naming a temp file (ingest.kinds.NAMING
# tells depth/thermal/IMU apart from photos by name: ``x.depth.png``).
SENSOR_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", ".png"), (b"\x93NUMPY", ".npy"), (b"v/1\x01", ".exr"), (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"), (b"\xff\xd8\xff", ".jpg"), (b"PAR1", ".parquet"),
)
SENSOR_MODALITIES = (Modality.DEPTH, Modality.THERMAL, Modality.IMU)


def bytes_file_name(keyword: QueryKeyword, data: bytes) -> str:
    """The temp file name for bytes: media by magic bytes, text and sensors by naming."""
    if keyword.text_is_value:
        return "query.txt"
    if keyword.modality in SENSOR_MODALITIES or is_extension(keyword.modality):
        ext = next((e for magic, e in SENSOR_MAGIC if data.startswith(magic)), ".csv")
        return f"query.{keyword.name}{ext}"
    return "query"  # images, audio, video: signatures (and ffprobe) decide


def file_segments(keyword: QueryKeyword, path: Path, settings: Settings,
                  count_tokens: Callable[[str], int] | None) -> list[Segment]:
    """A query file by ingestion's own route from bytes to segments: read, hashed and
    classified as a source of one file (``ingest.sources.read_local_file``), decoded by
    ``decode_events``; the keyword's modality is kept."""
    from ingest.sources import NotOneMediaFile, read_local_file

    check_query_file(keyword, path, settings)
    try:
        with read_local_file(path, settings) as entry:
            return _entry_segments(keyword, entry, settings, count_tokens)
    except NotOneMediaFile as exc:
        raise ValueError(f"{keyword.name}=: {exc}") from None


def _entry_segments(keyword: QueryKeyword, entry: Any, settings: Settings,
                    count_tokens: Callable[[str], int] | None) -> list[Segment]:
    from embed_workers.pipeline import decode_events

    name, kind = entry.item.member, entry.item.kind
    if kind not in keyword.kinds:
        wanted = " or ".join(k.value for k in keyword.kinds)
        raise ValueError(f"{keyword.name}={name!r} must be {wanted}; it is {kind.value}")
    segments: list[Segment] = []
    for out in decode_events(entry.item, entry.path, settings.policy, settings, count_tokens):
        if isinstance(out, Rejected):
            raise ValueError(f"{keyword.name}={name!r} cannot be decoded: {out.reason}")
        if isinstance(out, Segment) and out.modality == keyword.modality:
            segments.append(out)
    if not segments:
        raise ValueError(f"{keyword.name}={name!r} gave no {keyword.modality.value} segments")
    return segments


def check_query_file(keyword: QueryKeyword, path: Path, settings: Settings) -> None:
    """A query file exists and fits the query cap (before a byte of it is read)."""
    if not path.is_file():
        raise FileNotFoundError(f"{keyword.name}=: no such file: {path}")
    size = path.stat().st_size
    if size > settings.max_query_bytes:
        raise ValueError(f"{keyword.name}={path.name!r} is {size} bytes; the cap is "
                         f"{settings.max_query_bytes} (MEDIABIND_MAX_QUERY_BYTES)")


# --- encoding -------------------------------------------------------------------------------


def needed_modalities(parts: Iterable[QueryPart]) -> set[Modality]:
    return {p.modality for p in parts if p.modality is not None}


def part_vector(part: QueryPart, encoder: QueryEncoder | None, settings: Settings,
                count_tokens: Callable[[str], int] | None = None) -> np.ndarray:
    """One unit vector per input: a raw vector, or the mean of its encoded segments."""
    if part.keyword == VECTOR_KEYWORD:
        return check_vector(part.value)
    if encoder is None:
        raise RuntimeError(f"{part.keyword}= needs an encoder")
    segments = input_segments(part, settings, count_tokens)
    vectors = encoder.encode_segments(segments)  # the very preprocessing ingestion used
    return mean_unit(vectors, f"the {part.keyword}= input")


def parts_vector(parts: Sequence[QueryPart], encoder: QueryEncoder | None, settings: Settings,
                 count_tokens: Callable[[str], int] | None = None) -> np.ndarray:
    """All parts fused into one unit vector."""
    vectors = [part_vector(p, encoder, settings, count_tokens) for p in parts]
    return fuse(vectors, [p.weight for p in parts])
