"""Writing, registering and loading a modality extension under ``HOME/extensions``.

A version folder is written whole (spec, weights, licence note) under a
temporary name and renamed into place; only then does ``ACTIVE`` move to it,
also by rename. A reader therefore sees the old version or the new one,
never half of either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from embed_workers.model.extension import ExtensionEncoder, load_weights, save_weights
from embed_workers.model.presets import get_preset
from schemas.extension import (
    ACTIVE_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ExtensionError,
    ExtensionSpec,
    active_version,
    extensions_dir,
    read_spec,
    version_dir,
)

LICENSE_FILE = "LICENSE.txt"


def derived_license(base_preset: str) -> str:
    """The base weights' licence carries over to an encoder trained against them."""
    preset = get_preset(base_preset)
    if not preset.needs_checkpoint:
        return (f"Trained against {preset.name} ({preset.model_id}), a preset of seeded random "
                "weights that needs no licence; an encoder trained against the real checkpoint "
                "carries that checkpoint's licence.")
    return (f"Trained against the frozen vision encoder of {preset.name} ({preset.model_id}), "
            f"whose weights are licensed {preset.license}; this derived encoder carries the "
            "same licence and terms.")


def write_extension(model: ExtensionEncoder, home: Path) -> ExtensionSpec:
    """Write the model's weights and spec as a new version, make it active; return its spec."""
    root = extensions_dir(home) / model.spec.name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
    try:
        weights_sha = save_weights(model, staging / WEIGHTS_FILE)
        unversioned = model.spec.with_version("")
        version = hashlib.sha256((weights_sha + unversioned.to_json()).encode()).hexdigest()[:12]
        spec = model.spec.with_version(version)
        (staging / SPEC_FILE).write_text(spec.to_json())
        (staging / LICENSE_FILE).write_text(spec.license + "\n")
        target = version_dir(home, spec.name, version)
        if target.exists():
            shutil.rmtree(staging)  # the same weights and spec again: already written
        else:
            _readable(staging)
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    activate(home, spec.name, version)
    return spec


def _readable(folder: Path) -> None:
    """mkdtemp makes a private folder; every worker of a run must be able to read it."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def activate(home: Path, name: str, version: str) -> None:
    if not (version_dir(home, name, version) / SPEC_FILE).is_file():
        raise ExtensionError(f"extension {name!r} has no version {version!r}")
    marker = extensions_dir(home) / name / ACTIVE_FILE
    partial = marker.with_name(f".{ACTIVE_FILE}.{os.getpid()}")
    partial.write_text(version + "\n")
    partial.replace(marker)


def load_extension(home: Path, name: str, base_model_id: str,
                   version: str | None = None) -> ExtensionEncoder:
    """The registered encoder ``name`` (its active version by default), checked against the
    base model the caller embeds with: an extension trained against another base lives in
    another space and is refused."""
    version = version or active_version(home, name)
    if not version:
        raise ExtensionError(f"no extension {name!r} is registered under {extensions_dir(home)}")
    folder = version_dir(home, name, version)
    spec = read_spec(folder)
    check_base(spec, base_model_id)
    return load_weights(spec, folder / WEIGHTS_FILE)


def check_base(spec: ExtensionSpec, base_model_id: str) -> None:
    if spec.base_model_id != base_model_id:
        raise ExtensionError(
            f"extension {spec.name!r} was trained against {spec.base_model_id} "
            f"(preset {spec.base_preset}); this collection's model is {base_model_id}. "
            f"Its vectors would not share the space: retrain it with --preset for this model")
