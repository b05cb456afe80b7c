"""Transformer pieces shared by every trunk: attention, MLP, block, trunk.

Parameter names follow the official checkpoint (packed ``in_proj_weight``,
``bias_k``/``bias_v``, ``norm_1``, ``mlp.fc1`` ...) so weights load without
renaming. Tensors are batch-first ``[B, N, D]`` throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embed_workers.model.config import ImageBindConfig, TrunkConfig


class DropPath(nn.Module):
    """Stochastic depth on the residual branch; the identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection.

    With ``bias_kv`` a learned key and value token (not projected) is appended
    after the projection, so keys are one longer than queries. The kernel is
    ``F.scaled_dot_product_attention`` (flash/memory-efficient on CUDA).
    """

    def __init__(self, width: int, heads: int, bias_kv: bool) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        if bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, width))
            self.bias_v = nn.Parameter(torch.empty(1, 1, width))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, tokens, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, width)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, width)], dim=1)
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))

    def _split_heads(self, t: Tensor) -> Tensor:
        batch, tokens, width = t.shape
        return t.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)


class Mlp(nn.Module):
    """fc1 → exact (erf) GELU → fc2, hidden width 4×."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    def __init__(self, trunk: TrunkConfig, drop_path: float, eps: float) -> None:
        super().__init__()
        self.attn = SelfAttention(trunk.width, trunk.heads, trunk.bias_kv)
        self.drop_path = DropPath(drop_path)
        self.norm_1 = nn.LayerNorm(trunk.width, eps=eps)
        self.mlp = Mlp(trunk.width)
        self.norm_2 = nn.LayerNorm(trunk.width, eps=eps)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm_1(x), mask))
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class Trunk(nn.Module):
    """Optional pre-LayerNorm (vision only) and the blocks; no final norm (heads have it)."""

    def __init__(self, trunk: TrunkConfig, config: ImageBindConfig, pre_norm: bool) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        # Sequential so the vision LN is keyed ``pre_transformer_layer.0``.
        self.pre_transformer_layer = (
            nn.Sequential(nn.LayerNorm(trunk.width, eps=eps)) if pre_norm else nn.Identity()
        )
        rates = torch.linspace(0.0, trunk.drop_path, trunk.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(trunk, rate, eps) for rate in rates)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return x


class L2Normalize(nn.Module):
    """Unit L2 norm over the last axis."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by exp(log_logit_scale), capped; a parameter if learned, else a buffer."""

    def __init__(self, log_scale: float, learnable: bool, max_scale: float) -> None:
        super().__init__()
        value = torch.tensor(log_scale)
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)
        self.max_scale = max_scale

    def forward(self, x: Tensor) -> Tensor:
        scale = self.log_logit_scale.float().exp().clamp(max=self.max_scale)
        return x * scale
