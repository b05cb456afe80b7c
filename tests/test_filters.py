"""Our filter form: validation, and the objects it becomes for each engine."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import qdrant_edge as qe
from qdrant_client import models

from search.filters import (
    Match,
    MatchAnyOf,
    Prefix,
    Range,
    Where,
    parse_where,
    to_client_filter,
    to_edge_filter,
)


def test_dict_form_parses_to_conditions() -> None:
    where = parse_where({"modality": "audio", "kind": ["video", "audio"],
                         "start_s": {"gte": 10, "lt": 60}, "meta.camera": "A",
                         "source_uri": {"prefix": "s3://b/"}})
    assert where == Where((Match("modality", "audio"), MatchAnyOf("kind", ("video", "audio")),
                           Range("start_s", (("gte", 10.0), ("lt", 60.0)), False),
                           Match("meta.camera", "A"), Prefix("source_uri", "s3://b/")))


def test_datetime_ranges_take_iso_strings_and_datetimes() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    where = parse_where({"ingested_at": {"gte": "2026-01-01", "lt": when}})
    assert where.must == (Range("ingested_at", (("gte", "2026-01-01"),
                                                ("lt", when.isoformat())), True),)


def test_not_groups_conditions() -> None:
    where = parse_where({"archive": "/a", "not": {"modality": "text", "kind": "text"}})
    assert where.must_not == (Where((Match("modality", "text"), Match("kind", "text"))),)


@pytest.mark.parametrize("where, message", [
    ({"modalty": "audio"}, "unknown filter field 'modalty'; allowed: .*modality.*meta.<key>"),
    ({"meta": {"camera": "A"}}, "unknown filter field 'meta'"),
    ({"kind": []}, "empty list"),
    ({"start_s": {"gte": 1, "around": 2}}, "gt"),
    ({"start_s": {"gte": "soon"}}, "not an ISO 8601"),
    ({"start_s": {"gte": True}}, "a number"),
    ({"width": 1.5}, "str, int or bool"),
    ({"source_uri": {"prefix": 3}}, "prefix is a str"),
    (["modality", "audio"], "a dict"),
])
def test_bad_filters_are_clear_errors(where, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_where(where)


def test_none_and_empty_mean_no_condition() -> None:
    assert parse_where(None) is None
    assert parse_where({}) == Where()


def test_client_translation() -> None:
    where = parse_where({"kind": ["video"], "ingested_at": {"gte": "2026-01-01"},
                         "not": {"modality": "text"}})
    assert to_client_filter(where) == models.Filter(
        must=[models.FieldCondition(key="kind", match=models.MatchAny(any=["video"])),
              models.FieldCondition(key="ingested_at",
                                    range=models.DatetimeRange(gte="2026-01-01"))],
        must_not=[models.Filter(must=[models.FieldCondition(
            key="modality", match=models.MatchValue(value="text"))])])
    assert to_client_filter(None) is None


def test_edge_translation() -> None:
    edge = to_edge_filter(parse_where({"start_s": {"lt": 5}, "not": {"modality": "text"}}))
    assert isinstance(edge, qe.Filter)
    (start,) = edge.must
    assert start.key == "start_s" and isinstance(start.range, qe.RangeFloat)
    assert start.range.lt == 5.0 and start.range.gte is None
    (negated,) = edge.must_not
    assert isinstance(negated, qe.Filter) and negated.must[0].match.value == "text"
