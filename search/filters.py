"""Our small filter form, and its translation to each engine's filter objects.

A filter is a plain dict, one entry per payload field; all entries must hold::

    {"modality": "audio",                       # equals
     "kind": ["video", "audio"],                # a list means any of
     "archive": "/data/shoot1.tar",
     "start_s": {"gte": 10, "lt": 60},          # range: gt, gte, lt, lte
     "ingested_at": {"gte": "2026-01-01"},      # datetime range (ISO 8601 or datetime)
     "source_uri": {"prefix": "s3://bucket/"},  # keyword prefix
     "meta.camera": "A",                        # free sidecar metadata, any key under meta.
     "not": {"modality": "text"}}               # none of these holds together

Fields are those of ``schemas.payload.PAYLOAD_FIELDS`` plus ``meta.<key>``;
anything else is a ValueError that names the allowed fields, so a typo never
turns into a filter that silently matches nothing. A list field (``source_uri``)
matches when any of its values matches.

``parse_where`` turns the dict into ``Where`` (engine-neutral, validated);
``to_client_filter`` / ``to_edge_filter`` build the qdrant-client or
qdrant-edge objects from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from schemas.payload import INDEXED_FIELDS, PAYLOAD_FIELDS

RANGE_OPS = ("gt", "gte", "lt", "lte")
MatchScalar = str | int | bool


@dataclass(frozen=True, slots=True)
class Match:
    key: str
    value: MatchScalar


@dataclass(frozen=True, slots=True)
class MatchAnyOf:
    key: str
    values: tuple[MatchScalar, ...]


@dataclass(frozen=True, slots=True)
class Prefix:
    key: str
    prefix: str


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    bounds: tuple[tuple[str, float | str], ...]  # (op, value) pairs, op in RANGE_OPS
    is_datetime: bool


Condition = Match | MatchAnyOf | Prefix | Range


@dataclass(frozen=True, slots=True)
class Where:
    """All of ``must`` hold and none of the ``must_not`` groups holds as a whole."""

    must: tuple[Condition, ...] = ()
    must_not: tuple[Where, ...] = field(default=())

    def and_(self, other: Where | None) -> Where:
        if other is None:
            return self
        return Where(self.must + other.must, self.must_not + other.must_not)


# --- parsing ----------------------------------------------------------------------


def allowed_fields() -> list[str]:
    return sorted(f for f in PAYLOAD_FIELDS if f != "meta") + ["meta.<key>"]


def check_field(key: str) -> str:
    if key in PAYLOAD_FIELDS and key != "meta":
        return key
    if key.startswith("meta.") and len(key) > len("meta."):
        return key
    raise ValueError(f"unknown filter field {key!r}; allowed: {', '.join(allowed_fields())}")


def parse_where(where: Mapping[str, Any] | Where | None) -> Where | None:
    """Validate our dict form and return the engine-neutral ``Where`` (None: no filter)."""
    if where is None or isinstance(where, Where):
        return where
    if not isinstance(where, Mapping):
        raise ValueError(f"a filter is a dict of field -> condition, got {type(where).__name__}")
    must: list[Condition] = []
    must_not: list[Where] = []
    for key, spec in where.items():
        if key == "not":
            negated = parse_where(spec)
            if negated is not None:
                must_not.append(negated)
            continue
        must.append(_parse_condition(check_field(key), spec))
    return Where(tuple(must), tuple(must_not))


def _parse_condition(key: str, spec: Any) -> Condition:
    if isinstance(spec, Mapping):
        if set(spec) == {"prefix"}:
            return Prefix(key, _check_str(key, spec["prefix"]))
        return _parse_range(key, spec)
    if isinstance(spec, list | tuple | set | frozenset):
        values = tuple(_check_scalar(key, v) for v in spec)
        if not values:
            raise ValueError(f"filter on {key!r}: an empty list matches nothing")
        return MatchAnyOf(key, values)
    return Match(key, _check_scalar(key, spec))


def _parse_range(key: str, spec: Mapping[str, Any]) -> Range:
    unknown = set(spec) - set(RANGE_OPS)
    if unknown or not spec:
        raise ValueError(f"filter on {key!r}: use {RANGE_OPS} or 'prefix', got {sorted(spec)}")
    is_datetime = INDEXED_FIELDS.get(key) == "datetime" or any(
        isinstance(v, str | date) for v in spec.values())
    bounds = tuple((op, _range_value(key, v, is_datetime)) for op, v in spec.items())
    return Range(key, bounds, is_datetime)


def _range_value(key: str, value: Any, is_datetime: bool) -> float | str:
    if is_datetime:
        if isinstance(value, date):  # datetime is a date too
            return value.isoformat()
        if isinstance(value, str):
            _check_iso(key, value)
            return value
        raise ValueError(f"filter on {key!r}: a datetime bound is an ISO string, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"filter on {key!r}: a range bound is a number, got {value!r}")
    return float(value)


def _check_iso(key: str, value: str) -> None:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"filter on {key!r}: {value!r} is not an ISO 8601 datetime") from None


def _check_scalar(key: str, value: Any) -> MatchScalar:
    if isinstance(value, str | int | bool):  # Qdrant matches keywords, integers, booleans
        return value
    raise ValueError(f"filter on {key!r}: match a str, int or bool, got {value!r}")


def _check_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"filter on {key!r}: a prefix is a str, got {value!r}")
    return value


# --- translation ----------------------------------------------------------------------

Builder = Callable[[Any, Condition], Any]


def _translate(where: Where, mod: Any, builders: Mapping[type, Builder], **kw: Any) -> Any:
    must = [builders[type(c)](mod, c) for c in where.must]
    must_not = [_translate(w, mod, builders, **kw) for w in where.must_not]
    return mod.Filter(must=must or None, must_not=must_not or None, **kw)


def _bounds(cond: Range) -> dict[str, float | str]:
    return dict(cond.bounds)


CLIENT_BUILDERS: dict[type, Builder] = {
    Match: lambda m, c: m.FieldCondition(key=c.key, match=m.MatchValue(value=c.value)),
    MatchAnyOf: lambda m, c: m.FieldCondition(key=c.key, match=m.MatchAny(any=list(c.values))),
    Prefix: lambda m, c: m.FieldCondition(key=c.key, match=m.MatchPrefix(prefix=c.prefix)),
    Range: lambda m, c: m.FieldCondition(
        key=c.key, range=(m.DatetimeRange if c.is_datetime else m.Range)(**_bounds(c))),
}

EDGE_BUILDERS: dict[type, Builder] = {
    Match: lambda e, c: e.FieldCondition(c.key, match=e.MatchValue(c.value)),
    MatchAnyOf: lambda e, c: e.FieldCondition(c.key, match=e.MatchAny(list(c.values))),
    Prefix: lambda e, c: e.FieldCondition(c.key, match=e.MatchPrefix(c.prefix)),
    Range: lambda e, c: e.FieldCondition(
        c.key, range=(e.RangeDateTime if c.is_datetime else e.RangeFloat)(**_bounds(c))),
}


def to_client_filter(where: Where | None) -> Any:
    """qdrant_client.models.Filter (None: no filter)."""
    from qdrant_client import models

    return None if where is None else _translate(where, models, CLIENT_BUILDERS)


def to_edge_filter(where: Where | None) -> Any:
    """qdrant_edge.Filter (None: no filter)."""
    import qdrant_edge

    return None if where is None else _translate(where, qdrant_edge, EDGE_BUILDERS)


def any_of(key: str, values: Sequence[MatchScalar]) -> Where:
    """A filter built in code (ids we hold), skipping the dict form."""
    return Where((MatchAnyOf(check_field(key), tuple(values)),))
