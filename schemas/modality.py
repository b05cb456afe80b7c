"""Modalities (ImageBind's keys), file kinds, and the registry of their specs.

The modality is the key from input to output: code looks a modality up in
``MODALITIES`` instead of branching on its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Modality(StrEnum):
    """The six inputs of ImageBind; the values equal the checkpoint's keys."""

    VISION = "vision"
    TEXT = "text"
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"


class Kind(StrEnum):
    """What a source file is. A video gives vision and audio points."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"


@dataclass(frozen=True, slots=True)
class ModalitySpec:
    """How one modality is sampled and what its model input looks like.

    ``decoded`` documents the array a decoder hands to preprocessing
    (``Segment.data``); ``model_input`` the tensor the model takes per view.
    """

    modality: Modality
    kinds: tuple[Kind, ...]
    decoded: str
    model_input: tuple[int, ...]
    batch_size: int
    views_per_segment: int = 1


MODALITIES: dict[Modality, ModalitySpec] = {
    m.modality: m
    for m in (
        ModalitySpec(
            Modality.VISION,
            (Kind.IMAGE, Kind.VIDEO),
            "uint8 [H,W,3] RGB for an image; uint8 [2,H,W,3] RGB (first and last "
            "frame of the window) for a video clip",
            (3, 2, 224, 224),
            batch_size=32,
            views_per_segment=3,  # video clips: 3 spatial crops (images: 1)
        ),
        ModalitySpec(
            Modality.TEXT,
            (Kind.TEXT,),
            "str, one chunk that fits 77 CLIP tokens",
            (77,),
            batch_size=256,
        ),
        ModalitySpec(
            Modality.AUDIO,
            (Kind.AUDIO, Kind.VIDEO),
            "float32 [samples] mono at 16 kHz, one window (2 s = 32000 samples)",
            (1, 128, 204),
            batch_size=64,
        ),
        ModalitySpec(
            Modality.DEPTH,
            (Kind.DEPTH,),
            "float32 [H,W] disparity (1/metres); 0 where depth is unknown",
            (1, 224, 224),
            batch_size=64,
        ),
        ModalitySpec(
            Modality.THERMAL,
            (Kind.THERMAL,),
            "float32 [H,W] intensity scaled to [0,1]",
            (1, 224, 224),
            batch_size=64,
        ),
        ModalitySpec(
            Modality.IMU,
            (Kind.IMU,),
            "float32 [6,2000]: accelerometer xyz then gyroscope xyz, one window",
            (6, 2000),
            batch_size=128,
        ),
    )
}


def spec(modality: Modality | str) -> ModalitySpec:
    """The registry entry for a modality, with a clear error for unknown names."""
    try:
        return MODALITIES[Modality(modality)]
    except ValueError:
        names = ", ".join(m.value for m in Modality)
        raise ValueError(f"unknown modality {modality!r}; expected one of: {names}") from None
