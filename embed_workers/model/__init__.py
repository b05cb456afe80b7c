"""Our own ImageBind: config, model, presets, checkpoint loading, precision.

Typical use::

    from embed_workers.model import build_model, get_preset
    model = build_model(get_preset("imagebind_huge"), modalities=["vision", "text"],
                        device="cuda", dtype=torch.bfloat16)
    vectors = model.embed("vision", images)  # float32 [N, 1024], unit norm

The ImageBind weights are CC BY-NC-SA 4.0 (non-commercial); see ``checkpoint``.
"""

from embed_workers.model.checkpoint import (
    CheckpointError,
    LicenseNotAccepted,
    build_model,
    load_weights,
    resolve_checkpoint,
)
from embed_workers.model.config import ImageBindConfig, TrunkConfig, huge_config
from embed_workers.model.download import DownloadError, download
from embed_workers.model.imagebind import ImageBindModel
from embed_workers.model.precision import cast_for_inference, resolve_device, resolve_dtype
from embed_workers.model.presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "CheckpointError",
    "DownloadError",
    "ImageBindConfig",
    "ImageBindModel",
    "LicenseNotAccepted",
    "Preset",
    "TrunkConfig",
    "build_model",
    "cast_for_inference",
    "download",
    "get_preset",
    "huge_config",
    "load_weights",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
]
