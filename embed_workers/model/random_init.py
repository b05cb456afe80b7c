"""Seeded random weights for the test/benchmark presets, identical in every process.

Each tensor is drawn from its own CPU ``torch.Generator`` seeded with
(seed, key name), so the values depend neither on which modalities were built
nor on the order of construction: ingestion in one process and query encoding
in another get the same weights, hence the same vectors.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import Tensor, nn

from embed_workers.model.config import log_logit_scale_init
from embed_workers.model.stems import causal_mask
from schemas import Modality

INIT_STD = 0.02
# Learned tokens and tables: drawn small, like the reference initialisation.
EMBEDDING_KEYS = ("cls_token", "pos_embed", "token_embedding.weight", "bias_k", "bias_v")


def _key_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63)


def _layer_norm_keys(model: nn.Module) -> set[str]:
    return {f"{name}.{p}" for name, module in model.named_modules()
            if isinstance(module, nn.LayerNorm) for p in ("weight", "bias")}


def _fixed_value(key: str, shape: torch.Size) -> Tensor | None:
    """Tensors with a defined value (mask, logit scales), or None for random ones."""
    if key.endswith("text.mask"):
        return causal_mask(shape[0])
    if key.endswith("log_logit_scale"):
        modality = Modality(key.split(".")[1])
        return torch.tensor(log_logit_scale_init(modality))
    return None


def _seeded_value(key: str, shape: torch.Size, seed: int, norm_keys: set[str],
                  device: torch.device) -> Tensor:
    fixed = _fixed_value(key, shape)
    if fixed is not None:
        return fixed
    generator = torch.Generator(device=device).manual_seed(_key_seed(seed, key))
    if key in norm_keys:  # LayerNorm gains near 1, so the tiny nets are not trivially scaled
        return 1.0 + INIT_STD * torch.randn(shape, generator=generator, device=device)
    return _random_std(key, shape) * torch.randn(shape, generator=generator, device=device)


def _random_std(key: str, shape: torch.Size) -> float:
    """Small tokens/embeddings; unit-gain (1/sqrt(fan_in)) projections.

    Projections scaled by fan-in keep each layer's output on the scale of its
    input, so a tiny random network's vectors depend on its input (with a
    flat 0.02 the class token dominates and every input gives cosine > 0.999,
    which makes retrieval tests meaningless).
    """
    if len(shape) < 2 or key.endswith(EMBEDDING_KEYS):
        return INIT_STD
    return 1.0 / math.sqrt(math.prod(shape[1:]))


@torch.no_grad()
def seeded_init_(model: nn.Module, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """Fill every parameter and buffer of ``model`` in place from ``seed``.

    ``device`` is where the numbers are drawn: keep it "cpu" for weights that
    must match across processes (CPU and CUDA generators give different
    streams); a CUDA device is only for throwaway benchmark weights.
    """
    norm_keys = _layer_norm_keys(model)
    draw_on = torch.device(device)
    for key, tensor in model.state_dict(keep_vars=True).items():
        value = _seeded_value(key, tensor.shape, seed, norm_keys, draw_on)
        tensor.copy_(value.to(dtype=tensor.dtype, device=tensor.device))
    return model
