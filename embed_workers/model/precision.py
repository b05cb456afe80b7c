"""Device and dtype choice: bf16 on CUDA, fp32 on CPU, outputs always float32.

Weights of the preprocessors, trunks and heads are cast to the compute dtype;
the postprocessors (logit scales) stay float32 and ``ImageBindModel`` casts
head outputs to float32 before normalising, so the vectors we store never
carry bf16 rounding in their norm.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Parts of ImageBindModel that run in the compute dtype; the rest stays float32.
CAST_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as torch spells it."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available here")
    return device


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 elsewhere; else a name from ``DTYPES``."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected auto or one of {sorted(DTYPES)}") from None


def cast_for_inference(model: nn.Module, device: torch.device | str,
                       dtype: torch.dtype) -> nn.Module:
    """Move ``model`` to ``device``; cast its compute parts to ``dtype``, keep the rest fp32."""
    model.to(device=device)
    for part in CAST_PARTS:
        getattr(model, part).to(dtype=dtype)
    return model
