"""Per-modality preprocessors: raw model input → token sequence for a trunk.

Each returns ``Tokens``: the ``[B, N, D]`` sequence, the index of the token
the head pools (CLS = 0, or the end-of-text token), and the attention mask
(text only). Module and parameter names follow the official checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from embed_workers.model.config import ImageBindConfig
from schemas import Modality


class Tokens(NamedTuple):
    tokens: Tensor  # [B, N, D]
    pool_index: Tensor  # [B] int64, the token each head reads
    mask: Tensor | None  # additive [N, N] attention mask, or None


class RepeatFrames(nn.Module):
    """Turns images ``[B,3,H,W]`` (or 1-frame clips) into ``frames``-frame clips by repetition."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)
        if x.shape[2] != self.frames:
            raise ValueError(f"vision input has {x.shape[2]} frames; expected 1 or {self.frames}")
        return x


class PatchStem(nn.Module):
    """Patchify with ``proj``, flatten to tokens, then the optional ``norm_layer``."""

    def __init__(self, proj: nn.Module, norm: nn.LayerNorm | None) -> None:
        super().__init__()
        self.proj = proj
        if norm is not None:
            self.norm_layer = norm

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        norm = getattr(self, "norm_layer", None)
        return tokens if norm is None else norm(tokens)


class PosEmbedding(nn.Module):
    """Holds the learned position table (keyed ``pos_embedding_helper.pos_embed``)."""

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, width))


def _check_token_count(tokens: Tensor, table: Tensor, modality: str) -> None:
    if tokens.shape[1] != table.shape[1]:
        raise ValueError(
            f"{modality} input gives {tokens.shape[1]} tokens but the model has "
            f"{table.shape[1]} positions: check the input shape"
        )


def _cls_pool_index(tokens: Tensor) -> Tensor:
    return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)


class PatchPreprocessor(nn.Module):
    """Vision, audio, depth, thermal: stem → prepend CLS → add positions.

    The stem's attribute name differs by modality in the checkpoint
    (``rgbt_stem`` for vision/audio/thermal, ``depth_stem`` for depth).
    """

    def __init__(self, modality: Modality, stem_name: str, stem: PatchStem, tokens: int,
                 width: int) -> None:
        super().__init__()
        self.modality = modality
        self.stem_name = stem_name
        self.add_module(stem_name, stem)
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))
        self.pos_embedding_helper = PosEmbedding(tokens, width)

    def forward(self, x: Tensor) -> Tokens:
        patches = getattr(self, self.stem_name)(x)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        table = self.pos_embedding_helper.pos_embed
        _check_token_count(tokens, table, self.modality)
        return Tokens(tokens + table, _cls_pool_index(tokens), None)


class TextPreprocessor(nn.Module):
    """Token + position embeddings; causal mask; pools at argmax(ids) (the EOT token)."""

    def __init__(self, config: ImageBindConfig, width: int) -> None:
        super().__init__()
        context = config.text_context
        self.token_embedding = nn.Embedding(config.text_vocab, width)
        self.pos_embed = nn.Parameter(torch.empty(1, context, width))
        self.register_buffer("mask", causal_mask(context))

    def forward(self, ids: Tensor) -> Tokens:
        if ids.ndim != 2 or ids.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"text ids must be [B, {self.pos_embed.shape[1]}], got {list(ids.shape)}")
        tokens = self.token_embedding(ids) + self.pos_embed
        return Tokens(tokens, ids.argmax(dim=-1), self.mask.to(tokens.dtype))


def causal_mask(context: int) -> Tensor:
    """Additive mask: 0 on and below the diagonal, -inf above."""
    return torch.full((context, context), float("-inf")).triu(1)


class SeriesPreprocessor(nn.Module):
    """[B, C, T] → windows of ``window`` samples, each flattened channel-major → Linear → LN.

    IMU's stem (``imu_stem``), and the stem of ``series`` modality extensions.
    """

    def __init__(self, channels: int, window: int, tokens: int, width: int, eps: float,
                 stem_name: str = "imu_stem", label: str = "imu") -> None:
        super().__init__()
        self.window, self.stem_name, self.label = window, stem_name, label
        self.add_module(stem_name, PatchStem(nn.Linear(channels * window, width, bias=False),
                                             nn.LayerNorm(width, eps=eps)))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, width))
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))

    def forward(self, x: Tensor) -> Tokens:
        batch, channels, _ = x.shape
        windows = x.unfold(-1, self.window, self.window)  # [B, C, W, window]
        features = windows.permute(0, 2, 1, 3).reshape(batch, -1, channels * self.window)
        stem = getattr(self, self.stem_name)
        patches = stem.norm_layer(stem.proj(features))
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), patches], dim=1)
        _check_token_count(tokens, self.pos_embed, self.label)
        return Tokens(tokens + self.pos_embed, _cls_pool_index(tokens), None)


def _imu(config: ImageBindConfig, width: int) -> SeriesPreprocessor:
    """IMU: [B, 6, 2000] in windows of 8 samples (251 tokens with CLS)."""
    return SeriesPreprocessor(config.imu_channels, config.imu_window,
                              config.token_count(Modality.IMU), width, config.stem_norm_eps)


def _vision(config: ImageBindConfig, width: int) -> nn.Module:
    frames = config.vision_patch[0]
    conv = nn.Conv3d(3, width, config.vision_patch, stride=config.vision_patch, bias=False)
    stem = PatchStem(nn.Sequential(RepeatFrames(frames), conv), None)
    return PatchPreprocessor(Modality.VISION, "rgbt_stem", stem,
                             config.token_count(Modality.VISION), width)


def _single_channel(modality: Modality, stem_name: str,
                    kernel_of: Callable[[ImageBindConfig], int],
                    stride_of: Callable[[ImageBindConfig], int]) -> Callable:
    """Audio/depth/thermal: Conv2d(1→width, no bias) → LayerNorm(eps 1e-5)."""

    def build(config: ImageBindConfig, width: int) -> nn.Module:
        conv = nn.Conv2d(1, width, kernel_of(config), stride=stride_of(config), bias=False)
        stem = PatchStem(conv, nn.LayerNorm(width, eps=config.stem_norm_eps))
        return PatchPreprocessor(modality, stem_name, stem, config.token_count(modality), width)

    return build


PREPROCESSOR_BUILDERS: dict[Modality, Callable[[ImageBindConfig, int], nn.Module]] = {
    Modality.VISION: _vision,
    Modality.TEXT: TextPreprocessor,
    Modality.AUDIO: _single_channel(Modality.AUDIO, "rgbt_stem", lambda c: c.audio_kernel,
                                    lambda c: c.audio_stride),
    Modality.DEPTH: _single_channel(Modality.DEPTH, "depth_stem", lambda c: c.depth_patch,
                                    lambda c: c.depth_patch),
    Modality.THERMAL: _single_channel(Modality.THERMAL, "rgbt_stem", lambda c: c.thermal_patch,
                                      lambda c: c.thermal_patch),
    Modality.IMU: _imu,
}
