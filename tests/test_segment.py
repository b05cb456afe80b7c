"""Windows cover the whole duration: no gaps, right count, full-length windows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.segment import window_count, windows
from schemas import SegmentPolicy


def assert_covers(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans[0][0] == 0.0
    assert math.isclose(spans[-1][1], duration, abs_tol=1e-6)
    for (s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert s1 <= e0 + 1e-9, "gap between windows"
        assert s1 > s0, "windows must advance"


def test_exact_multiple_gives_back_to_back_windows():
    assert windows(10.0, SegmentPolicy(2, 2)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_remainder_moves_the_last_window_back_to_end_at_the_duration():
    spans = windows(10.5, SegmentPolicy(2, 2))
    assert spans[-1] == (8.5, 10.5)
    assert len(spans) == 6
    assert all(math.isclose(e - s, 2.0) for s, e in spans)


def test_overlapping_stride():
    spans = windows(6.0, SegmentPolicy(segment_s=2, stride_s=1))
    assert spans == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]


@pytest.mark.parametrize("duration", [0.001, 0.5, 1.999, 2.0])
def test_media_shorter_than_a_window_is_one_window(duration):
    assert windows(duration, SegmentPolicy(2, 2)) == [(0.0, duration)]


@pytest.mark.parametrize("duration", [None, 0.0, -1.0, math.inf, math.nan])
def test_no_usable_duration_raises(duration):
    with pytest.raises(ValueError, match="duration"):
        windows(duration, SegmentPolicy())


def test_an_hour_gives_1800_windows_not_five():
    assert len(windows(3600.0, SegmentPolicy())) == 1800


def test_float_noise_does_not_add_a_window():
    assert len(windows(0.1 + 0.2 + 5.7, SegmentPolicy(2, 2))) == 3  # 6.000000000000001


@settings(deadline=None, max_examples=200)
@given(duration=st.floats(0.01, 1000), seg=st.floats(0.5, 10), ratio=st.floats(0.25, 1.0))
def test_windows_always_cover_without_gaps(duration, seg, ratio):
    policy = SegmentPolicy(segment_s=seg, stride_s=seg * ratio)
    spans = windows(duration, policy)
    assert len(spans) == window_count(round(duration, 6), policy)
    assert_covers(spans, round(duration, 6))
    assert all(e - s <= seg + 2e-6 for s, e in spans)  # each end rounded to 1 us
