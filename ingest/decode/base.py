"""What every decoder gets and how it fails.

A decoder is a generator ``decoder(job) -> Iterator[Segment]``; it raises
:class:`DecodeError` (or anything else) when the file is bad, and
``decode_item`` turns that into a ``Rejected`` after the segments already made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.segment import windows
from schemas import Kind, MediaItem, Modality, Segment, SegmentPolicy, Settings

TokenCounter = Callable[[str], int]


class DecodeError(RuntimeError):
    """The file cannot be turned into segments; the message is the Rejected reason."""


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """One item to decode, with everything the decoders may need."""

    item: MediaItem
    path: Path
    policy: SegmentPolicy
    settings: Settings
    count_tokens: TokenCounter | None = None

    def segment(self, modality: Modality, index: int, start_s: float | None,
                end_s: float | None, data: np.ndarray | str, kind: Kind | None = None,
                **extra: Any) -> Segment:
        """A Segment of this job's item (kind defaults to the item's kind)."""
        return Segment(self.item.item_id, modality, kind or self.item.kind, index, start_s,
                       end_s, data, extra)


Decoder = Callable[[DecodeJob], Iterator[Segment]]


def bounded_windows(duration_s: float | None, policy: SegmentPolicy,
                    settings: Settings) -> list[tuple[float, float]]:
    """``ingest.segment.windows``, refusing durations over ``settings.max_media_duration_s``.

    A header is easy to forge: a 2-KB mp4 whose ``mvhd`` claims 2^32 s would
    otherwise make billions of windows (tens of GB) before a byte is decoded.
    Raises DecodeError for such a claim; ``windows`` raises ValueError when there
    is no usable duration at all.
    """
    limit = settings.max_media_duration_s
    if duration_s is not None and duration_s > limit:
        raise DecodeError(f"claimed duration {duration_s:.0f} s is over max_media_duration_s="
                         f"{limit:g} (corrupt or hostile header?)")
    return windows(duration_s, policy)


def unit_stretch(values: np.ndarray) -> np.ndarray:
    """float64 min-max stretched to [0,1] over the finite values; non-finite pixels → 0.

    Infinities are left out of the range on purpose: ``nan_to_num`` would turn
    ±inf into ±1.8e308, whose difference overflows to inf and makes every pixel NaN.
    A constant (or wholly non-finite) image gives zeros.
    """
    data = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape)
    low, high = float(data[finite].min()), float(data[finite].max())
    span = high - low
    if not span > 0:
        return np.zeros(data.shape)
    if not np.isfinite(span):
        return _halved_stretch(data, finite, low, high)
    return np.where(finite, (data - low) / span, 0.0)


def _halved_stretch(data: np.ndarray, finite: np.ndarray, low: float, high: float) -> np.ndarray:
    # A finite range wider than float64 can hold (e.g. -1e308..1e308): halve first.
    half = np.where(finite, data, 0.0) / 2
    return np.where(finite, (half - low / 2) / (high / 2 - low / 2), 0.0)
