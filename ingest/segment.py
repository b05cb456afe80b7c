"""Cutting long media into windows that cover the whole duration (DESIGN.md §3).

ImageBind samples 5 clips per video (and 3 per audio file) and never looks at
the tail of long media; we cover everything: windows of ``policy.segment_s``
every ``policy.stride_s`` from 0, and the last window moved back so that it ends
exactly at the duration (every window keeps the full length the model was
trained on; the tail overlaps its neighbour instead of being a short stub).
Media shorter than one window gives one window ``[0, duration]``.
"""

from __future__ import annotations

import math

from schemas import SegmentPolicy

# Times are rounded to microseconds so 0.1 + 0.2 style noise never makes an
# extra window or a window that ends a hair past the file.
_TIME_DIGITS = 6


def windows(duration_s: float | None, policy: SegmentPolicy) -> list[tuple[float, float]]:
    """(start_s, end_s) windows covering ``[0, duration_s]`` without gaps.

    Raises ValueError for a missing, zero, negative or infinite duration: the
    caller turns that into a ``Rejected`` (there is nothing to cover).
    """
    if duration_s is None or not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"cannot segment media with duration {duration_s!r}")
    duration = round(duration_s, _TIME_DIGITS)
    seg, stride = policy.segment_s, policy.stride_s
    if duration <= seg + 10**-_TIME_DIGITS:  # within rounding of one window
        return [(0.0, duration)]
    count = window_count(duration, policy)
    spans = [(round(k * stride, _TIME_DIGITS), round(k * stride + seg, _TIME_DIGITS))
             for k in range(count - 1)]
    return [*spans, (round(duration - seg, _TIME_DIGITS), duration)]


def window_count(duration_s: float, policy: SegmentPolicy) -> int:
    """How many windows ``windows`` returns for a positive duration."""
    if duration_s <= policy.segment_s + 10**-_TIME_DIGITS:
        return 1
    steps = (duration_s - policy.segment_s) / policy.stride_s
    # A step count within float noise of an integer lands exactly on the end.
    return math.ceil(round(steps, 9)) + 1
