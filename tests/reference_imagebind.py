"""Import the reference ImageBind model code (test-only, CC BY-NC-SA 4.0) without its package init.

The installed ``imagebind`` package (PyPI imagebind-unofficial, a byte copy
of the official code) runs ``from imagebind import data`` in its
``__init__``, which imports pytorchvideo (not installed; broken on current
torchvision). We register empty parent packages pointing at the installed
folders, so ``imagebind.models.*`` import on their own. Nothing of ours
imports this module; only tests and benchmarks do.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from embed_workers.model.config import ImageBindConfig
from schemas import Modality


def reference_package_dir() -> Path | None:
    """The installed ``imagebind`` folder, or None if the package is absent."""
    stub = sys.modules.get("imagebind")
    if stub is not None and getattr(stub, "__path__", None):
        return Path(next(iter(stub.__path__)))
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _stub_package(name: str, folder: Path) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    module.__package__ = name
    sys.modules[name] = module


def import_reference_model() -> types.ModuleType:
    """``imagebind.models.imagebind_model`` without running ``imagebind/__init__.py``."""
    folder = reference_package_dir()
    if folder is None:
        raise ImportError("the reference package 'imagebind' (imagebind-unofficial) is not installed")
    _stub_package("imagebind", folder)
    _stub_package("imagebind.models", folder / "models")
    return importlib.import_module("imagebind.models.imagebind_model")


def reference_kwargs(config: ImageBindConfig) -> dict[str, Any]:
    """Our config as the reference ``ImageBindModel`` constructor's keyword arguments."""
    kwargs: dict[str, Any] = {
        "video_frames": config.vision_patch[0],
        "kernel_size": config.vision_patch,
        "audio_kernel_size": config.audio_kernel,
        "audio_stride": config.audio_stride,
        "out_embed_dim": config.out_dim,
        "audio_num_mel_bins": config.audio_mel_bins,
        "audio_target_len": config.audio_frames,
        "depth_kernel_size": config.depth_patch,
        "thermal_kernel_size": config.thermal_patch,
        "imu_kernel_size": config.imu_window,
    }
    for modality in Modality:
        trunk = config.trunk(modality)
        kwargs[f"{modality.value}_embed_dim"] = trunk.width
        kwargs[f"{modality.value}_num_blocks"] = trunk.depth
        kwargs[f"{modality.value}_num_heads"] = trunk.heads
        if modality in (Modality.AUDIO, Modality.DEPTH, Modality.THERMAL, Modality.IMU):
            kwargs[f"{modality.value}_drop_path"] = trunk.drop_path
    return kwargs


def build_reference_model(config: ImageBindConfig) -> Any:
    """The reference ``ImageBindModel`` at ``config``'s dimensions, random weights, eval mode."""
    module = import_reference_model()
    return module.ImageBindModel(**reference_kwargs(config)).eval()
