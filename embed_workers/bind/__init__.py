"""``mediabind bind``: train a new modality into the joint space and register it.

The steps, each in its own module:

1. ``pairs``: read and check the manifest of (sample, image or video[, time]).
2. ``ingest.decode.extension``: read every sample as ingest will read it, checked
   against the declared geometry.
3. ``targets``: the frozen base model's vectors of the paired images, computed
   once and cached in the run folder.
4. ``train``: the new encoder trained from scratch with symmetric InfoNCE, in
   this process or on a Ray Train group (``ray_train``), checkpointed per epoch.
5. ``evaluate``: held-out retrieval against chance, the emergent directions,
   the loss curve.
6. ``artifact``: the spec and safetensors weights written under
   ``HOME/extensions/<name>/<version>`` and made active.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from embed_workers.bind.artifact import derived_license, write_extension
from embed_workers.bind.evaluate import PLOT_FILE, Report, paired_recall, plot_losses
from embed_workers.bind.pairs import Pair, read_pairs, split
from embed_workers.bind.targets import cached_targets
from embed_workers.bind.train import Data, TrainOptions, claim_run_dir, embed_views
from embed_workers.model.presets import get_preset
from ingest.decode.base import DecodeError
from ingest.decode.extension import read_views
from schemas import Modality, Settings
from schemas.extension import (
    ExtensionError,
    ExtensionSpec,
    Geometry,
    Normalisation,
    TrunkSpec,
    check_name,
    default_patterns,
)

Progress = Callable[[str], None]
SHOWN_PROBLEMS = 5
SERIES_SUFFIXES, MAP_SUFFIXES = (".csv", ".parquet"), (".png", ".tif", ".tiff")


@dataclass(frozen=True, slots=True)
class BindRequest:
    """Everything ``mediabind bind`` was asked for."""

    name: str
    pairs: Path
    layout: str | None = None  # None: from the samples' file type
    geometry: Geometry | None = None  # None: the layout's defaults
    trunk: TrunkSpec = TrunkSpec()
    temperature: float = 0.05
    holdout: float = 0.2
    options: TrainOptions = TrainOptions()
    executor: str = "local"
    workers: int = 1
    run_dir: Path | None = None  # default HOME/bind/<name>
    restart: bool = False


@dataclass(frozen=True, slots=True)
class BindResult:
    spec: ExtensionSpec
    report: Report
    run_dir: Path
    resumed_from_epoch: int


def bind(request: BindRequest, settings: Settings, progress: Progress | None = None) -> BindResult:
    """Check everything, train (resuming when the run folder holds a checkpoint), evaluate,
    and register the new modality. Nothing is registered unless every step succeeds."""
    say = progress or (lambda _m: None)
    check_name(request.name)
    pairs = read_pairs(request.pairs)
    spec = _spec(request, pairs, settings)
    train_rows, held_rows = split(pairs, request.holdout, request.options.seed)
    views = load_samples(pairs, spec)
    spec = replace(spec, normalisation=statistics(views[train_rows], spec.layout),
                   trained={**spec.trained, "train_pairs": len(train_rows),
                            "held_out_pairs": len(held_rows)})
    run_dir = _run_dir(request, settings)
    identity = {"spec": asdict(spec), "options": asdict(request.options),
                "pairs": _pairs_key(pairs), "holdout": request.holdout}
    claim_run_dir(run_dir, identity)
    say(f"{len(pairs)} pairs: {len(train_rows)} to train, {len(held_rows)} held out")
    targets = image_targets(pairs, settings, run_dir, say)
    data = Data(torch.from_numpy(views[train_rows]), torch.from_numpy(targets[train_rows]),
                torch.from_numpy(views[held_rows]), torch.from_numpy(targets[held_rows]))
    from embed_workers.bind.executors import train_with

    model, history, started_at = train_with(request, spec, data, run_dir, say)
    plot_losses(history.train_loss, history.held_loss, run_dir / PLOT_FILE)
    held = [pairs[r] for r in held_rows]
    report = evaluation(model, spec, held, data.held_x, data.held_t, settings, run_dir, say)
    registered = write_extension(model, settings.home)  # only once every step succeeded
    report = replace(report, version=registered.version)
    report.write(run_dir)
    return BindResult(registered, report, run_dir, started_at)


def evaluate_registered(request: BindRequest, settings: Settings,
                        progress: Progress | None = None) -> Report:
    """The report of the registered ``request.name`` on the manifest's held-out pairs
    (the same split ``bind`` held out, for the same holdout and seed)."""
    from embed_workers.bind.artifact import load_extension

    say = progress or (lambda _m: None)
    model = load_extension(settings.home, request.name, get_preset(settings.preset).model_id)
    pairs = read_pairs(request.pairs)
    held_rows = split(pairs, request.holdout, request.options.seed)[1]
    held = [pairs[r] for r in held_rows]
    run_dir = _run_dir(replace(request, restart=False), settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    views = torch.from_numpy(load_samples(held, model.spec))
    # every pair's targets, as training cached them: the cache key is the whole manifest
    targets = torch.from_numpy(image_targets(pairs, settings, run_dir, say)[held_rows])
    return evaluation(model, model.spec, held, views, targets, settings, run_dir, say)


def _spec(request: BindRequest, pairs: list[Pair], settings: Settings) -> ExtensionSpec:
    preset = get_preset(settings.preset)
    layout = request.layout or infer_layout(pairs[0].sample)
    geometry = request.geometry or Geometry()
    return ExtensionSpec(
        name=request.name, layout=layout, base_preset=preset.name, base_model_id=preset.model_id,
        geometry=geometry, trunk=request.trunk, patterns=default_patterns(request.name, layout),
        out_dim=preset.config.out_dim, temperature=request.temperature,
        license=derived_license(preset.name),
        trained={"pairs": len(pairs), "epochs": request.options.epochs})


def infer_layout(sample: Path) -> str:
    suffix = sample.suffix.lower()
    if suffix in SERIES_SUFFIXES:
        return "series"
    if suffix in MAP_SUFFIXES:
        return "map"
    raise ExtensionError(f"{sample.name}: a {suffix or 'suffix-less'} file may be a time series "
                         "or a map: give --layout series or --layout map")


def load_samples(pairs: list[Pair], spec: ExtensionSpec) -> np.ndarray:
    """float32 [N, *view shape]: each sample's first view (a series' first window)."""
    views, problems = [], []
    for row, pair in enumerate(pairs):
        try:
            views.append(read_views(pair.sample, spec)[0])
        except DecodeError as exc:
            problems.append(f"row {row + 1} ({pair.sample.name}): {exc}")
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        raise ExtensionError(f"{len(problems)} of {len(pairs)} samples do not fit the "
                             f"{spec.layout} geometry {_geometry_text(spec)}: {shown}")
    stacked = np.stack(views).astype(np.float32)
    return stacked if spec.layout == "series" else stacked[:, None]  # maps: one channel


def _geometry_text(spec: ExtensionSpec) -> str:
    g = spec.geometry
    if spec.layout == "series":
        return f"({g.channels} channels x {g.samples} samples)"
    return f"({g.height} x {g.width})"


def statistics(views: np.ndarray, layout: str) -> Normalisation:
    """Per-channel (series) or overall (map) mean and std of the training views."""
    axes = (0, 2) if layout == "series" else None
    mean = np.atleast_1d(views.mean(axis=axes, dtype=np.float64))
    std = np.atleast_1d(views.std(axis=axes, dtype=np.float64))
    std = np.where(std > 1e-12, std, 1.0)  # a flat channel is left unscaled
    return Normalisation(tuple(mean.tolist()), tuple(std.tolist()))


def image_targets(pairs: list[Pair], settings: Settings, run_dir: Path, say: Progress) -> np.ndarray:
    from embed_workers.encoder import Encoder

    encoder = Encoder(modalities=[Modality.VISION], settings=settings)
    refs = [(p.image, p.time_s) for p in pairs]
    return cached_targets(refs, Modality.VISION, encoder, settings, run_dir, say)


def _run_dir(request: BindRequest, settings: Settings) -> Path:
    run_dir = Path(request.run_dir or settings.home / "bind" / request.name)
    if request.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


def _pairs_key(pairs: list[Pair]) -> str:
    rows = [(str(p.sample), str(p.image), p.time_s) for p in pairs]
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def evaluation(model, spec: ExtensionSpec, held: list[Pair], views: torch.Tensor,
               targets: torch.Tensor, settings: Settings, run_dir: Path, say: Progress) -> Report:
    """Held-out retrieval both ways and the emergent directions, written to report.json."""
    new = embed_views(model, views, torch.device("cpu")).numpy()
    preset = get_preset(settings.preset)
    notes = [] if preset.needs_checkpoint else [
        f"the base preset {preset.name} has random weights: these figures exercise the code "
        "path; emergent retrieval means something only with the real checkpoint"]
    report = Report(spec.name, spec.version, spec.base_model_id, len(new),
                    int(spec.trained.get("train_pairs", 0)),
                    paired_recall(new, targets.numpy(), spec.name),
                    emergent(new, held, spec.name, settings, run_dir, say),
                    meaningful=preset.needs_checkpoint, notes=notes)
    report.write(run_dir)
    return report


def emergent(new: np.ndarray, held: list[Pair], name: str, settings: Settings, run_dir: Path,
             say: Progress) -> list:
    """new → text (labels) and new → audio (paired sounds) on the held-out pairs, when given."""
    from embed_workers.bind.evaluate import label_recall, recall_at
    from embed_workers.encoder import Encoder

    found = []
    labels = [p.label for p in held]
    if all(labels):
        distinct = sorted(set(labels))
        text = Encoder(modalities=[Modality.TEXT], settings=settings).encode(Modality.TEXT, distinct)
        found.append(label_recall(new, labels, text, distinct, name))
    if all(p.audio for p in held):
        encoder = Encoder(modalities=[Modality.AUDIO], settings=settings)
        sounds = cached_targets([(p.audio, None) for p in held], Modality.AUDIO, encoder,
                                settings, run_dir, say)
        found.append(recall_at(new, sounds, np.arange(len(held)), f"{name} -> audio"))
    return found
