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
