"""Preprocessing where segments are decoded: ``Segment`` → ``Prepared`` (metadata + model tensor).

The executors run a ``Preparer`` in their decode workers (local: the decode
threads; Ray: the decode tasks), so the encoder's thread only stacks ready
tensors and runs the model (``Encoder.encode_prepared``). The recipe itself
is ``embed_workers.preprocess``; this module adds only what travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from embed_workers.preprocess import DEFAULT_OPTIONS, PreprocessOptions, batch_key, to_model_input
from schemas import Modality, Segment

# Vision tensors are the big ones (a 3-crop clip is 3×3×2×224×224 float32 ≈ 3.6 MB, about
# seven times its uint8 frames). When the model computes in bf16/fp16 anyway they travel
# as float16: half the memory and transfer. float16 keeps 10 mantissa bits to bf16's 7
# (values here lie within ±3), so the model's own bf16 rounding dominates what it sees.
# In float32 runs nothing is cast: vectors equal ``Encoder.encode_segments``'s.
WIRE_DTYPE_REDUCED: dict[Modality, torch.dtype] = {Modality.VISION: torch.float16}
REDUCED_DTYPES = frozenset({torch.bfloat16, torch.float16})


def wire_dtypes(compute_dtype: torch.dtype) -> dict[Modality, torch.dtype]:
    """Storage dtype per modality for prepared tensors, given the model's compute dtype."""
    return dict(WIRE_DTYPE_REDUCED) if compute_dtype in REDUCED_DTYPES else {}


def metadata_only(segment: Segment) -> Segment:
    """The segment without its decoded array (text stays: it is the payload's ``text``)."""
    if isinstance(segment.data, str):
        return segment
    return replace(segment, data=np.zeros(0, np.uint8))


@dataclass(frozen=True, slots=True)
class Prepared:
    """One segment made model-ready where it was decoded.

    ``segment`` keeps what the record builder needs (ids, times, extra, text)
    without the decoded array; ``tensor`` is the per-item model input in its
    wire dtype; ``layout`` (``batch_key``) says which inputs share a model batch.
    """

    segment: Segment
    layout: str
    tensor: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.tensor.element_size() * self.tensor.nelement()


def from_wire(batch: torch.Tensor) -> torch.Tensor:
    """A stacked batch back in the model's input dtype (float16 storage → float32)."""
    return batch.float() if batch.dtype == torch.float16 else batch


@dataclass(frozen=True, slots=True)
class Preparer:
    """Segment → ``Prepared`` with the recipe's options; runs in the decode workers."""

    options: PreprocessOptions = DEFAULT_OPTIONS
    wire: dict[Modality, torch.dtype] = field(default_factory=dict)

    @classmethod
    def for_model(cls, options: PreprocessOptions, compute_dtype: torch.dtype) -> Preparer:
        return cls(options, wire_dtypes(compute_dtype))

    def __call__(self, segment: Segment) -> Prepared:
        """Raises ValueError (naming the input and layout) for an input the recipe refuses."""
        tensor = to_model_input(segment, self.options)
        wire = self.wire.get(Modality(segment.modality))
        if wire is not None and tensor.is_floating_point():
            tensor = tensor.to(wire)
        return Prepared(metadata_only(segment), batch_key(segment), tensor.contiguous())
