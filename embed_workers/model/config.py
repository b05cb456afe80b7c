"""Architecture configuration of our ImageBind (dimensions only, no weights).

The numbers of ``huge_config()`` are the official ``imagebind_huge`` ones
(shared/reference/imagebind.md §2). Smaller configs change only the trunk
widths/depths: the input shapes and token counts stay the same, so the same
preprocessing feeds every preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from schemas import Modality


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """One modality's transformer: token width, blocks, heads, stochastic depth."""

    width: int
    depth: int
    heads: int
    drop_path: float = 0.0
    bias_kv: bool = False  # learned extra key/value token (audio, depth, thermal, imu)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


# Multiplier applied after L2 normalisation in ``forward`` (the training
# temperatures). Text's is learned (this is its initial value, capped at 100).
LOGIT_SCALES: dict[Modality, float | None] = {
    Modality.VISION: None,
    Modality.TEXT: 1 / 0.07,
    Modality.AUDIO: 20.0,
    Modality.DEPTH: 5.0,
    Modality.THERMAL: 10.0,
    Modality.IMU: 5.0,
}
LEARNED_LOGIT_SCALE = frozenset({Modality.TEXT})
MAX_LOGIT_SCALE = 100.0
# Only the vision trunk has a LayerNorm before its blocks (inherited from CLIP).
PRE_NORM_TRUNKS = frozenset({Modality.VISION})


def _huge_trunks() -> dict[Modality, TrunkConfig]:
    return {
        Modality.VISION: TrunkConfig(1280, 32, 16),
        Modality.TEXT: TrunkConfig(1024, 24, 16),
        Modality.AUDIO: TrunkConfig(768, 12, 12, drop_path=0.1, bias_kv=True),
        Modality.DEPTH: TrunkConfig(384, 12, 8, bias_kv=True),
        Modality.THERMAL: TrunkConfig(768, 12, 12, bias_kv=True),
        Modality.IMU: TrunkConfig(512, 6, 8, drop_path=0.7, bias_kv=True),
    }


@dataclass(frozen=True)
class ImageBindConfig:
    """Every dimension the model needs; defaults are ImageBind-huge."""

    out_dim: int = 1024
    trunks: dict[Modality, TrunkConfig] = field(default_factory=_huge_trunks)
    image_size: int = 224
    vision_patch: tuple[int, int, int] = (2, 14, 14)  # (frames, height, width)
    audio_mel_bins: int = 128
    audio_frames: int = 204
    audio_kernel: int = 16
    audio_stride: int = 10
    depth_patch: int = 16
    thermal_patch: int = 16
    imu_channels: int = 6
    imu_samples: int = 2000
    imu_window: int = 8
    text_context: int = 77
    text_vocab: int = 49408
    layer_norm_eps: float = 1e-6  # trunks, vision pre-LN, heads
    stem_norm_eps: float = 1e-5  # audio/depth/thermal/imu stems
    imu_head_dropout: float = 0.5

    def trunk(self, modality: Modality | str) -> TrunkConfig:
        return self.trunks[Modality(modality)]

    def with_trunks(self, **trunks: TrunkConfig) -> ImageBindConfig:
        """A copy with some trunks replaced, keyed by modality name."""
        merged = dict(self.trunks)
        merged.update({Modality(name): trunk for name, trunk in trunks.items()})
        return replace(self, trunks=merged)

    def token_count(self, modality: Modality | str) -> int:
        """Tokens a trunk sees per view, CLS included (257/77/229/197/197/251 for huge)."""
        return TOKEN_COUNTS[Modality(modality)](self)


def _vision_tokens(c: ImageBindConfig) -> int:
    return 1 + (c.image_size // c.vision_patch[1]) * (c.image_size // c.vision_patch[2])


def _audio_tokens(c: ImageBindConfig) -> int:
    rows = (c.audio_mel_bins - c.audio_kernel) // c.audio_stride + 1
    cols = (c.audio_frames - c.audio_kernel) // c.audio_stride + 1
    return 1 + rows * cols


TOKEN_COUNTS = {
    Modality.VISION: _vision_tokens,
    Modality.TEXT: lambda c: c.text_context,
    Modality.AUDIO: _audio_tokens,
    Modality.DEPTH: lambda c: 1 + (c.image_size // c.depth_patch) ** 2,
    Modality.THERMAL: lambda c: 1 + (c.image_size // c.thermal_patch) ** 2,
    Modality.IMU: lambda c: 1 + c.imu_samples // c.imu_window,
}


def huge_config() -> ImageBindConfig:
    """The official ImageBind-huge architecture (1.2 B parameters)."""
    return ImageBindConfig()


def log_logit_scale_init(modality: Modality) -> float | None:
    """The stored ``log_logit_scale`` value before any training (None: no scaling)."""
    scale = LOGIT_SCALES[modality]
    return None if scale is None else math.log(scale)
