"""Search results: typed hits, grouped by source file or flat per segment.

A ``Hit`` is one source file (grouped) or one stored point (flat). Its
``start_s``/``end_s`` are the best matching moment; a file-level point (the
renormalised mean of a file's segments, ``segment_index == -1``) may give the
file its score but is never a moment, since it has no time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, overload

from schemas import FILE_LEVEL_INDEX

SNIPPET_CHARS = 60


class StoredHit(Protocol):
    """What the store returns per point (``search.backends.ScoredPoint``)."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Moment:
    """One matching segment of a file: where, in which modality, how well."""

    score: float
    modality: str
    segment_index: int
    start_s: float | None
    end_s: float | None
    text: str | None
    point_id: str

    @property
    def is_file_level(self) -> bool:
        return self.segment_index == FILE_LEVEL_INDEX


@dataclass(frozen=True, slots=True)
class Hit:
    """One result row: a file (grouped) or a segment (flat), with its best moment."""

    rank: int
    score: float
    item_id: str
    source_uris: tuple[str, ...]
    kind: str
    modality: str
    segment_index: int
    start_s: float | None
    end_s: float | None
    text: str | None
    point_id: str
    payload: dict[str, Any] = field(repr=False)
    moments: tuple[Moment, ...] = ()

    @property
    def source_uri(self) -> str:
        return self.source_uris[0] if self.source_uris else ""

    @property
    def snippet(self) -> str:
        return shorten(self.text or "", SNIPPET_CHARS)

    @property
    def moment_label(self) -> str:
        return moment_label(self.start_s, self.end_s)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (no payload copy of the moments)."""
        out = asdict(self)
        out["source_uris"] = list(self.source_uris)
        out["moments"] = [asdict(m) for m in self.moments]
        return out


# --- building hits from stored points --------------------------------------------------


def moment_of(point: StoredHit) -> Moment:
    p = point.payload
    return Moment(float(point.score), str(p.get("modality", "")),
                  int(p.get("segment_index", FILE_LEVEL_INDEX)), p.get("start_s"), p.get("end_s"),
                  p.get("text"), str(point.id))


def hit_from_points(rank: int, points: Sequence[StoredHit], moments: int) -> Hit:
    """A file's hit from its stored points (best first): score of the best, time of the best moment."""
    pairs = [(moment_of(p), p) for p in points]
    timed = [pair for pair in pairs if not pair[0].is_file_level]
    best, best_point = timed[0] if timed else pairs[0]
    shown = tuple(m for m, _ in timed[:moments])
    return _hit(rank, float(points[0].score), best, best_point.payload, shown)


def hit_from_point(rank: int, point: StoredHit) -> Hit:
    """A flat hit: one stored point."""
    moment = moment_of(point)
    return _hit(rank, moment.score, moment, point.payload, (moment,))


def _hit(rank: int, score: float, best: Moment, payload: dict[str, Any],
         moments: tuple[Moment, ...]) -> Hit:
    return Hit(rank=rank, score=score, item_id=str(payload.get("item_id", "")),
               source_uris=_uris(payload.get("source_uri")), kind=str(payload.get("kind", "")),
               modality=best.modality, segment_index=best.segment_index, start_s=best.start_s,
               end_s=best.end_s, text=best.text, point_id=best.point_id, payload=payload,
               moments=moments)


def _uris(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


# --- formatting ----------------------------------------------------------------------------


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss past an hour."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def moment_label(start_s: float | None, end_s: float | None) -> str:
    if start_s is None:
        return "whole file"
    return f"{clock(start_s)}–{clock(end_s if end_s is not None else start_s)}"


def shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


TABLE_COLUMNS = ("rank", "score", "file", "kind", "moment", "snippet")


def table_rows(hits: Sequence[Hit]) -> list[tuple[str, ...]]:
    return [(str(h.rank), f"{h.score:.4f}", shorten(h.source_uri, 70), h.kind, h.moment_label,
             h.snippet) for h in hits]


def render_table(rows: Sequence[tuple[str, ...]], header: Sequence[str]) -> str:
    widths = [max(len(r[i]) for r in [tuple(header), *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [tuple(header), tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines)


# --- the result list ---------------------------------------------------------------------------


class SearchResults(Sequence[Hit]):
    """The hits of one search, best first: a list-like of ``Hit`` with table/pandas/JSON views."""

    def __init__(self, hits: Sequence[Hit], *, grouped: bool, limit: int, offset: int,
                 collection: str = "") -> None:
        self.hits = tuple(hits)
        self.grouped = grouped
        self.limit = limit
        self.offset = offset
        self.collection = collection

    @overload
    def __getitem__(self, index: int) -> Hit: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Hit]: ...

    def __getitem__(self, index: int | slice) -> Hit | Sequence[Hit]:
        return self.hits[index]

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __repr__(self) -> str:
        mode = "grouped by file" if self.grouped else "flat"
        return f"<SearchResults {len(self)} hits, {mode}, offset {self.offset}>"

    def __str__(self) -> str:
        if not self.hits:
            return "no results"
        return render_table(table_rows(self.hits), TABLE_COLUMNS)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [h.to_dict() for h in self.hits]

    def to_json(self, **kwargs: Any) -> str:
        body = {"collection": self.collection, "grouped": self.grouped, "limit": self.limit,
                "offset": self.offset, "hits": self.to_dicts()}
        return json.dumps(body, default=str, **kwargs)

    def to_pandas(self) -> Any:
        """One row per hit; ``moments`` holds the list of moment dicts per file."""
        import pandas as pd

        rows = [{**{k: v for k, v in h.to_dict().items() if k != "payload"},
                 "source_uri": h.source_uri, "snippet": h.snippet} for h in self.hits]
        return pd.DataFrame(rows, columns=list(DATAFRAME_COLUMNS))


DATAFRAME_COLUMNS = ("rank", "score", "item_id", "source_uri", "source_uris", "kind", "modality",
                     "segment_index", "start_s", "end_s", "text", "snippet", "point_id", "moments")
