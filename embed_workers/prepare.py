"""Packing where segments are decoded: ``Segment`` → ``Prepared`` (metadata + packed tensor).

The executors run a ``Preparer`` in their decode workers (local: the decode
threads; Ray: the decode actors). It checks each input and packs it
(``preprocess.pack``): uint8 frames for vision, the waveform for audio, raw
planes and series for the sensors, token ids for text. The rest of the recipe
(``preprocess.finish``: crops, normalisation, the fbank, resampling) runs on
the encoder's device, a batch at a time (``Encoder.encode_prepared``).

What crosses per 2-s video window at 3 crops: the two uint8 frames (224×398
for 16:9), where the finished crops are 3×3×2×224×224 floats, and crossed as
float16 in reduced-precision runs before finishing moved to the encoder
(``benchmarks/decode.py`` prints the bytes per window of real files).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from embed_workers.preprocess import DEFAULT_OPTIONS, PreprocessOptions, input_spec
from schemas import Segment


def metadata_only(segment: Segment) -> Segment:
    """The segment without its decoded array (text stays: it is the payload's ``text``)."""
    if isinstance(segment.data, str):
        return segment
    return replace(segment, data=np.zeros(0, np.uint8))


@dataclass(frozen=True, slots=True)
class Prepared:
    """One segment checked and packed where it was decoded.

    ``segment`` keeps what the record builder needs (ids, times, extra, text)
    without the decoded array; ``tensor`` is the packed input; ``layout``
    (``preprocess.batch_key``) says which inputs share a model batch, and
    ``views`` how many model views the input makes (a 3-crop clip makes 3).
    """

    segment: Segment
    layout: str
    tensor: torch.Tensor
    views: int = 1

    @property
    def nbytes(self) -> int:
        return self.tensor.element_size() * self.tensor.nelement()


@dataclass(frozen=True, slots=True)
class Preparer:
    """Segment → ``Prepared`` with the recipe's options; runs in the decode workers."""

    options: PreprocessOptions = DEFAULT_OPTIONS

    def __call__(self, segment: Segment) -> Prepared:
        """Raises ValueError (naming the input and layout) for an input the recipe refuses."""
        recipe = input_spec(segment.modality, segment.kind)
        tensor = recipe.pack(segment.data, self.options)
        return Prepared(metadata_only(segment), recipe.name, tensor.contiguous(),
                        recipe.views(self.options))
