"""Presets: architecture, weights and preprocessing that travel together.

``imagebind_huge`` is the official model and needs its checkpoint (CC BY-NC-SA
4.0, non-commercial). ``imagebind_tiny`` (tests) and ``imagebind_mid`` (CPU
benchmarks) keep every input shape and token count of huge, so preprocessing
is shared, but have small trunks and seeded random weights that are the same
in every process (see ``random_init``). Random presets never give meaningful
similarities; they exist to exercise the whole system.
"""

from __future__ import annotations

from dataclasses import dataclass

from embed_workers.model.config import ImageBindConfig, TrunkConfig, huge_config

IMAGEBIND_LICENSE = "CC BY-NC-SA 4.0"
IMAGEBIND_LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
RANDOM_WEIGHTS_LICENSE = "none needed (seeded random weights, no training data)"


@dataclass(frozen=True)
class Preset:
    """One model as the system knows it.

    ``model_id`` goes into point ids and collection names, so it changes
    whenever the vectors would. ``random_seed`` is set for presets whose
    weights are generated rather than downloaded. ``preprocessing`` names the
    recipe that turns decoded arrays into model inputs.
    """

    name: str
    model_id: str
    config: ImageBindConfig
    checkpoint_url: str | None
    checkpoint_filename: str
    checkpoint_bytes: int | None
    license: str
    random_seed: int | None = None
    preprocessing: str = "imagebind"

    @property
    def needs_checkpoint(self) -> bool:
        return self.random_seed is None


def _tiny_config() -> ImageBindConfig:
    return huge_config().with_trunks(
        vision=TrunkConfig(64, 2, 4),
        text=TrunkConfig(32, 1, 2),
        audio=TrunkConfig(32, 1, 2, drop_path=0.1, bias_kv=True),
        depth=TrunkConfig(32, 1, 2, bias_kv=True),
        thermal=TrunkConfig(32, 1, 2, bias_kv=True),
        imu=TrunkConfig(32, 1, 2, drop_path=0.7, bias_kv=True),
    )


def _mid_config() -> ImageBindConfig:
    return huge_config().with_trunks(
        vision=TrunkConfig(384, 6, 6),
        text=TrunkConfig(256, 4, 4),
        audio=TrunkConfig(256, 4, 4, drop_path=0.1, bias_kv=True),
        depth=TrunkConfig(192, 4, 4, bias_kv=True),
        thermal=TrunkConfig(256, 4, 4, bias_kv=True),
        imu=TrunkConfig(192, 2, 4, drop_path=0.7, bias_kv=True),
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="imagebind_huge",
            model_id="imagebind_huge",
            config=huge_config(),
            checkpoint_url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
            checkpoint_filename="imagebind_huge.pth",
            checkpoint_bytes=None,  # not measured yet (≈ 4.8 GB of fp32 tensors)
            license=IMAGEBIND_LICENSE,
        ),
        Preset(
            name="imagebind_tiny",
            model_id="imagebind_tiny_s0",
            config=_tiny_config(),
            checkpoint_url=None,
            checkpoint_filename="imagebind_tiny.pth",
            checkpoint_bytes=None,
            license=RANDOM_WEIGHTS_LICENSE,
            random_seed=0,
        ),
        Preset(
            name="imagebind_mid",
            model_id="imagebind_mid_s0",
            config=_mid_config(),
            checkpoint_url=None,
            checkpoint_filename="imagebind_mid.pth",
            checkpoint_bytes=None,
            license=RANDOM_WEIGHTS_LICENSE,
            random_seed=0,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, with a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise KeyError(f"unknown model preset {name!r}; known presets: {known}") from None
