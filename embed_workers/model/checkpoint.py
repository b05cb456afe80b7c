"""Finding, downloading and loading weights; ``build_model`` for every preset.

The ImageBind weights are licensed CC BY-NC-SA 4.0 (non-commercial use
only). They are downloaded only after the user accepts that licence
(``MEDIABIND_ACCEPT_LICENSE=true``); otherwise the error says where to put
the file by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from embed_workers.model.download import DownloadError, download, partial_path
from embed_workers.model.imagebind import ImageBindModel
from embed_workers.model.precision import cast_for_inference
from embed_workers.model.presets import IMAGEBIND_LICENSE_URL, Preset
from embed_workers.model.random_init import seeded_init_
from schemas import Modality, Settings, get_settings

__all__ = [
    "CheckpointError",
    "DownloadError",
    "LicenseNotAccepted",
    "build_model",
    "download",
    "load_weights",
    "resolve_checkpoint",
]

MODULE_GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads",
                 "modality_postprocessors")
BENCHMARK_SEED = 0


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class LicenseNotAccepted(CheckpointError):
    """The weights would need downloading, but their licence was not accepted."""


def _licence_refusal(preset: Preset, target: Path) -> str:
    return (
        f"The {preset.name} weights are not on this machine ({target} does not exist), and "
        f"downloading them needs your acceptance of their licence, {preset.license} "
        f"({IMAGEBIND_LICENSE_URL}): non-commercial use only, credit Meta AI, and share "
        f"derived works under the same licence.\n"
        f"  - to accept and download: set MEDIABIND_ACCEPT_LICENSE=true "
        f"(fetches {preset.checkpoint_url}{_size_note(preset)} into {target});\n"
        f"  - or download {preset.checkpoint_url} yourself and put it at {target}, "
        f"or point MEDIABIND_CHECKPOINT at the file."
    )


def _size_note(preset: Preset) -> str:
    size = preset.checkpoint_bytes or sum(4 * p.numel() for p in _meta_parameters(preset))
    return f", about {size / 1e9:.1f} GB,"


def _meta_parameters(preset: Preset) -> list[Tensor]:
    with torch.device("meta"):
        return list(ImageBindModel(preset.config).state_dict().values())


def _existing(path: Path, source: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file from {source} does not exist: {path}")
    return path


def resolve_checkpoint(preset: Preset, settings: Settings | None = None,
                       path: Path | str | None = None, *, download_allowed: bool = True) -> Path:
    """Where the preset's weights are, downloading them if allowed.

    Order: ``path`` → ``settings.checkpoint`` (MEDIABIND_CHECKPOINT) →
    ``settings.checkpoint_dir/<checkpoint_filename>`` → download from the
    preset's URL, only when ``settings.accept_license`` is true and
    ``download_allowed`` (False: a lookup that never touches the network).
    """
    settings = settings or get_settings()
    if path is not None:
        return _existing(Path(path), "the explicit path")
    if settings.checkpoint is not None:
        return _existing(Path(settings.checkpoint), "MEDIABIND_CHECKPOINT")
    target = settings.checkpoint_dir / preset.checkpoint_filename
    if target.is_file() and _has_expected_size(target, preset, download_allowed and
                                               settings.accept_license):
        return target
    if preset.checkpoint_url is None:
        raise CheckpointError(f"preset {preset.name} has no download URL and {target} does not exist")
    if not download_allowed:
        raise CheckpointError(f"no {preset.name} checkpoint at {target} (nor MEDIABIND_CHECKPOINT)")
    if not settings.accept_license:
        raise LicenseNotAccepted(_licence_refusal(preset, target))
    try:
        return download(preset.checkpoint_url, target, preset.checkpoint_bytes)
    except DownloadError as error:
        raise CheckpointError(
            f"could not fetch the {preset.name} weights from {preset.checkpoint_url} into "
            f"{target} ({error}). Offline? Copy the file there by hand or set "
            f"MEDIABIND_CHECKPOINT.") from error


def _has_expected_size(target: Path, preset: Preset, may_download: bool) -> bool:
    """A cached file of the wrong size is a damaged download: set it aside to be fetched
    again (a shorter one is resumed as the partial) when downloading is allowed, else refuse."""
    size, expected = target.stat().st_size, preset.checkpoint_bytes
    if expected is None or size == expected:
        return True
    if not may_download:
        raise CheckpointError(f"{target} holds {size} bytes, but the {preset.name} checkpoint "
                              f"has {expected}: the file is damaged; delete it and download "
                              "again (MEDIABIND_ACCEPT_LICENSE=true) or copy a good one there")
    if size < expected:
        os.replace(target, partial_path(target))  # resumed; download checks the overlap
    else:
        target.unlink()
    return False


def _modality_of(key: str) -> str | None:
    """``modality_trunks.audio.blocks.0...`` → ``audio``; None for keys outside the groups."""
    group, _, rest = key.partition(".")
    return rest.partition(".")[0] if group in MODULE_GROUPS else None


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for a bad file; name the file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a plain state_dict of tensors")
    return state


def _describe_mismatch(path: Path, expected: Mapping[str, Tensor],
                       given: Mapping[str, Tensor]) -> str | None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k}: checkpoint {list(given[k].shape)} vs model {list(expected[k].shape)}"
              for k in expected if k in given and given[k].shape != expected[k].shape]
    problems = [f"{len(missing)} missing keys (e.g. {missing[:3]})" if missing else "",
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})" if unexpected else "",
                f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})" if shapes else ""]
    problems = [p for p in problems if p]
    return f"checkpoint {path} does not fit the model: " + "; ".join(problems) if problems else None


def load_weights(model: ImageBindModel, path: Path | str,
                 modalities: Iterable[Modality | str] | None = None,
                 assign: bool = False) -> ImageBindModel:
    """Load the keys of ``modalities`` (default: all the model has) from ``path``, strictly.

    Keys of other modalities in the file are skipped, so a full checkpoint
    feeds a one-modality model. ``assign=True`` adopts the (memory-mapped)
    tensors instead of copying, for models built on the meta device.
    """
    path = Path(path)
    names = {model.modality(m).value for m in (modalities if modalities is not None else model.modalities)}
    state = _read_state_dict(path)
    given = {k: v for k, v in state.items() if _modality_of(k) in names or _modality_of(k) is None}
    expected = {k: v for k, v in model.state_dict().items() if _modality_of(k) in names}
    problem = _describe_mismatch(path, expected, given)
    if problem:
        raise CheckpointError(problem)
    covers_model = names == {m.value for m in model.modalities}
    model.load_state_dict(given, strict=covers_model, assign=assign)
    return model


def build_model(preset: Preset, modalities: Iterable[Modality | str] | None = None,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                checkpoint: Path | str | None = None, settings: Settings | None = None,
                random_init: bool = False) -> ImageBindModel:
    """The preset's model in eval mode on ``device``/``dtype``, with only ``modalities``.

    Random-weight presets (tiny, mid) are generated from their seed and need no
    file. Checkpoint presets read their file (``resolve_checkpoint``) into a
    model built on the meta device, so the weights are never allocated twice.
    ``random_init=True`` gives a checkpoint preset random weights: for
    benchmarks only, never for ingestion (the vectors mean nothing).
    """
    with torch.device("meta"):
        model = ImageBindModel(preset.config, modalities)
    if preset.random_seed is not None or random_init:
        model = _fill_random(model, preset, device, random_init)
    else:
        path = resolve_checkpoint(preset, settings, checkpoint)
        load_weights(model, path, assign=True)
    cast_for_inference(model, device, dtype)
    return model.eval().requires_grad_(False)


def _fill_random(model: ImageBindModel, preset: Preset, device: torch.device | str,
                 benchmark_only: bool) -> ImageBindModel:
    if benchmark_only and preset.random_seed is None:  # throwaway: draw on the target device
        model.to_empty(device=device)
        return seeded_init_(model, BENCHMARK_SEED, device)
    model.to_empty(device="cpu")  # CPU draws: identical weights in every process
    return seeded_init_(model, preset.random_seed if preset.random_seed is not None else BENCHMARK_SEED)
