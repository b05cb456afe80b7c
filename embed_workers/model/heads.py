"""Heads (pool one token → LayerNorm → projection to the joint space) and postprocessors.

Key layouts follow the checkpoint: ``<m>.0`` LayerNorm and ``<m>.2`` Linear
(IMU: ``.3``, after a Dropout at ``.2``); text ``proj.0``/``proj.1``;
postprocessors ``<m>.1.log_logit_scale`` (vision has none).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from embed_workers.model.config import (
    LEARNED_LOGIT_SCALE,
    MAX_LOGIT_SCALE,
    ImageBindConfig,
    log_logit_scale_init,
)
from embed_workers.model.layers import L2Normalize, LogitScale
from schemas import Modality


def pick_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens[b, index[b]]`` for every row b: [B, N, D] → [B, D]."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return tokens[rows, index]


class PooledHead(nn.Sequential):
    """LayerNorm, (token selection), [Dropout], Linear without bias.

    Index 1 is a parameter-free placeholder where the reference layout selects
    the token; we select first (LayerNorm is per token, so the result is the
    same) to normalise one token instead of all of them.
    """

    def forward(self, tokens: Tensor, pool_index: Tensor) -> Tensor:  # type: ignore[override]
        x = self[0](pick_tokens(tokens, pool_index))
        for layer in list(self)[2:]:
            x = layer(x)
        return x


class TextHead(nn.Module):
    """Select the end-of-text token, then ``proj`` = LayerNorm → Linear without bias."""

    def __init__(self, width: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(width, eps=eps), nn.Linear(width, out_dim, bias=False))

    def forward(self, tokens: Tensor, pool_index: Tensor) -> Tensor:
        return self.proj(pick_tokens(tokens, pool_index))


def _cls_head(config: ImageBindConfig, width: int) -> nn.Module:
    eps = config.layer_norm_eps
    return PooledHead(nn.LayerNorm(width, eps=eps), nn.Identity(),
                      nn.Linear(width, config.out_dim, bias=False))


def _imu_head(config: ImageBindConfig, width: int) -> nn.Module:
    eps = config.layer_norm_eps
    return PooledHead(nn.LayerNorm(width, eps=eps), nn.Identity(),
                      nn.Dropout(config.imu_head_dropout),
                      nn.Linear(width, config.out_dim, bias=False))


def _text_head(config: ImageBindConfig, width: int) -> nn.Module:
    return TextHead(width, config.out_dim, config.layer_norm_eps)


HEAD_BUILDERS: dict[Modality, Callable[[ImageBindConfig, int], nn.Module]] = {
    Modality.VISION: _cls_head,
    Modality.TEXT: _text_head,
    Modality.AUDIO: _cls_head,
    Modality.DEPTH: _cls_head,
    Modality.THERMAL: _cls_head,
    Modality.IMU: _imu_head,
}


def build_postprocessor(modality: Modality) -> nn.Sequential:
    """L2-normalise, then multiply by the modality's logit scale (vision: none)."""
    log_scale = log_logit_scale_init(modality)
    if log_scale is None:
        return nn.Sequential(L2Normalize())
    learnable = modality in LEARNED_LOGIT_SCALE
    return nn.Sequential(L2Normalize(), LogitScale(log_scale, learnable, MAX_LOGIT_SCALE))
