"""``Encoder``: segments or query inputs → unit vectors, with the model loaded once per process.

Every route runs the recipe (``embed_workers.preprocess``) in its two halves:
``pack`` checks an input and makes the compact tensor that crosses (uint8
frames, waveforms, tokens), and ``finish`` turns a stacked batch of packs into
model input on the model's device (crops, normalisation, the fbank). The
pipeline packs in its decode workers and hands ``encode_prepared`` the packs;
``encode_segments`` and ``encode`` (queries) pack on the calling thread. Either
way the finishing and the model run here, a batch at a time. The model runs under
``torch.inference_mode`` on the chosen device (bf16 autocast on CUDA by
default). Each modality's tower is built the first time it
is needed and shared by every Encoder of the process with the same preset,
device, dtype and checkpoint, so a worker never holds the weights twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embed_workers import preprocess as pp
from embed_workers.model import (
    ImageBindModel,
    build_model,
    get_preset,
    resolve_device,
    resolve_dtype,
)
from embed_workers.prepare import Prepared
from schemas import Kind, Modality, Segment, Settings, get_settings, spec
from schemas.extension import (
    EXTENSION_BATCH,
    ExtensionName,
    active_specs,
    extension_kind,
    is_extension,
)

# (modality, kind, data, label for errors): one input, whatever it came from.
_Item = tuple[Modality, Kind, Any, str]
# (modality, layout name): inputs with equal keys share a model batch.
_BatchKey = tuple[Modality, str]
_ModelKey = tuple[str, Modality, str, torch.dtype, str | None]

_MODELS: dict[_ModelKey, ImageBindModel] = {}
_MODELS_LOCK = threading.Lock()


def release_models() -> None:
    """Forget every cached tower (frees their memory once no Encoder uses them)."""
    with _MODELS_LOCK:
        _MODELS.clear()


# Registry batch sizes suit a CPU; an H100/H200 wants larger batches for the big towers.
CUDA_BATCH_FACTOR = 4

class Encoder:
    """Turns segments (ingest) or raw inputs (queries) into float32 [N,1024] unit vectors.

    ``None`` arguments take their value from ``settings`` (MEDIABIND_*).
    ``modalities`` limits which towers may be built (default: any, on first
    use). ``batch_sizes`` overrides ``spec(m).batch_size``, counted in model
    views: a 3-crop video clip counts 3. On CUDA the registry's sizes are
    multiplied by ``CUDA_BATCH_FACTOR`` (the registry's suit a CPU).
    """

    def __init__(self, preset: str | None = None, modalities: Sequence[Modality | str] | None = None,
                 device: str | None = None, dtype: str | None = None,
                 checkpoint: Path | str | None = None, settings: Settings | None = None,
                 batch_sizes: Mapping[Modality | str, int] | None = None) -> None:
        self.settings = settings or get_settings()
        self.preset_name = preset or self.settings.preset
        self.preset = get_preset(self.preset_name)
        if self.preset.preprocessing != pp.RECIPE:
            raise ValueError(f"preset {self.preset_name} needs preprocessing "
                             f"{self.preset.preprocessing!r}; this build implements {pp.RECIPE!r}")
        self.checkpoint = checkpoint or self.settings.checkpoint
        self.device = resolve_device(device or self.settings.device)
        self.dtype = resolve_dtype(dtype or self.settings.dtype, self.device)
        # Modality extensions (``mediabind bind``) are allowed unless a list leaves them out.
        self.modalities = tuple(m if is_extension(m) else Modality(m)
                                for m in (modalities or Modality))
        self._extensions_allowed = modalities is None
        self.options = pp.PreprocessOptions(video_crops=self.settings.video_crops)
        self.batch_sizes = view_budgets(self.device.type)
        self.batch_sizes.update({Modality(m): _positive(n) for m, n in (batch_sizes or {}).items()})

    @property
    def model_id(self) -> str:
        """Goes into point ids and collection names (changes whenever the vectors would)."""
        return self.preset.model_id

    @property
    def dim(self) -> int:
        return self.preset.config.out_dim

    # --- public API ------------------------------------------------------------------

    def encode_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        """float32 [N,1024] unit vectors, row i for segments[i]; batched per modality and layout."""
        items = [(_modality(s.modality), _kind(s.kind), s.data,
                  f"segment {i} (item {s.item_id}, {s.modality} #{s.index})")
                 for i, s in enumerate(segments)]
        return self._encode_items(items)

    def encode(self, modality: Modality | str, inputs: Sequence[np.ndarray | str]) -> np.ndarray:
        """Query inputs of one modality → float32 [N,1024]. Vision arrays are images
        ([H,W,3]) or clips ([2,H,W,3]), told apart by rank."""
        modality = self.resolve(modality)
        items = [(modality, pp.query_kind(modality, x), x, f"{modality} input {i}")
                 for i, x in enumerate(inputs)]
        return self._encode_items(items)

    def encode_prepared(self, inputs: Sequence[Prepared]) -> np.ndarray:
        """Inputs packed elsewhere (``prepare.Preparer``) → float32 [N,1024], row i for
        inputs[i]; batched exactly as ``encode_segments`` batches the same segments."""
        keys = [(self._allowed(_modality(p.segment.modality)), p.layout) for p in inputs]
        return self._encode_packed(keys, [p.tensor for p in inputs])

    def encode_batch(self, modality: Modality | str, batch: torch.Tensor) -> np.ndarray:
        """A ready model batch (``preprocess.stack_inputs``) → float32 [N,1024] unit vectors."""
        modality = self._allowed(_modality(modality))
        model = self._model(modality)
        with torch.inference_mode(), self._autocast():
            vectors = model.embed(modality, batch.to(self.device))
        out = vectors.float().cpu().numpy()
        if not np.isfinite(out).all():  # never hand NaN vectors to a store
            raise RuntimeError(f"the {modality} tower produced non-finite vectors "
                               f"(device {self.device}, dtype {self.dtype})")
        return out

    def finish_batch(self, layout: str, packs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Packs of one layout → the model input batch on the model's device, in order.

        Packs of equal shape are stacked and finished together (clips from videos of
        other aspect ratios form their own stacks); on CUDA each stack crosses from
        pinned memory, uint8 frames included, and is finished on the GPU.
        """
        shapes: dict[tuple[int, ...], list[int]] = {}
        for row, tensor in enumerate(packs):
            shapes.setdefault(tuple(tensor.shape), []).append(row)
        with torch.inference_mode():
            parts = [pp.finish(layout, self._on_device([packs[r] for r in rows]), self.options)
                     for rows in shapes.values()]
            if len(parts) == 1:
                return parts[0]
            order = [row for rows in shapes.values() for row in rows]
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            return torch.cat(parts)[inverse.to(self.device)]

    # --- internals ---------------------------------------------------------------------

    def _encode_items(self, items: Sequence[_Item]) -> np.ndarray:
        packs = [self._pack(item) for item in items]  # every input checked before any compute
        keys = [(modality, pp.input_spec(modality, kind).name) for modality, kind, _d, _l in items]
        return self._encode_packed(keys, packs)

    def _encode_packed(self, keys: Sequence[_BatchKey], packs: Sequence[torch.Tensor]) -> np.ndarray:
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for rows in self._batches(keys):
            modality, layout = keys[rows[0]]
            batch = self.finish_batch(layout, [packs[r] for r in rows])
            out[rows] = self.encode_batch(modality, batch)
        return out

    def _on_device(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Equal-shape packs stacked on the model's device. On CUDA they are stacked
        straight into pinned memory and copied without blocking the host."""
        if self.device.type != "cuda":
            return torch.stack(tensors).to(self.device)
        first = tensors[0]
        pinned = torch.empty((len(tensors), *first.shape), dtype=first.dtype, pin_memory=True)
        torch.stack(tensors, out=pinned)
        return pinned.to(self.device, non_blocking=True)

    def _pack(self, item: _Item) -> torch.Tensor:
        modality, kind, data, label = item
        self._allowed(modality)
        try:
            return pp.pack(modality, data, kind, self.options)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from error

    def _batches(self, keys: Sequence[_BatchKey]) -> Iterator[list[int]]:
        """Row indices per model call: grouped by layout (first seen first), cut by the
        modality's budget in model views."""
        groups: dict[_BatchKey, list[int]] = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        for (modality, layout), rows in groups.items():
            views = pp.layout_spec(layout).views(self.options)
            size = max(1, self.views_per_batch(modality) // views)
            for start in range(0, len(rows), size):
                yield rows[start : start + size]

    def views_per_batch(self, modality: Modality | str) -> int:
        """The model views one batch of ``modality`` holds (an extension's: EXTENSION_BATCH)."""
        return self.batch_sizes.get(modality, EXTENSION_BATCH)

    def resolve(self, modality: Modality | str) -> Modality | ExtensionName:
        """A built-in modality, or the active version of the extension of that name."""
        if is_extension(modality):
            return modality
        try:
            return Modality(modality)
        except ValueError:
            spec = active_specs(self.settings.home).get(str(modality))
            if spec is None:
                names = ", ".join([m.value for m in Modality] + list(active_specs(self.settings.home)))
                raise ValueError(f"unknown modality {modality!r}; expected one of: {names}") from None
            return extension_kind(spec)

    def _allowed(self, modality: Modality) -> Modality:
        if is_extension(modality) and (self._extensions_allowed or modality in self.modalities):
            return modality
        if modality not in self.modalities:
            names = ", ".join(m.value for m in self.modalities)
            raise ValueError(f"this Encoder was made for {names}; it cannot encode {modality}")
        return modality

    def _model(self, modality: Modality) -> ImageBindModel:
        if is_extension(modality):
            return self._extension_model(modality)
        key = (self.preset_name, modality, str(self.device), self.dtype,
               str(self.checkpoint) if self.checkpoint else None)
        with _MODELS_LOCK:  # one build per process, even with several threads asking
            if key not in _MODELS:
                _MODELS[key] = build_model(self.preset, [modality], device=self.device,
                                           dtype=self.dtype, checkpoint=self.checkpoint,
                                           settings=self.settings)
            return _MODELS[key]

    def _extension_model(self, name: ExtensionName) -> ExtensionTower:
        """The extension's encoder at the version that named the input, checked against
        this encoder's base model (another base's vectors would not share the space)."""
        key = (f"extension:{name.identity}", self.model_id, str(self.device), self.dtype, None)
        with _MODELS_LOCK:
            if key not in _MODELS:
                from embed_workers.bind.artifact import load_extension

                model = load_extension(self.settings.home, str(name), self.model_id, name.version)
                _MODELS[key] = ExtensionTower(model.to(self.device))
            return _MODELS[key]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16/fp16 autocast on CUDA keeps LayerNorm and softmax in float32."""
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast(device_type="cuda", dtype=self.dtype)
        return contextlib.nullcontext()


class ExtensionTower(torch.nn.Module):
    """An extension's encoder behind the ``embed(modality, x)`` of ``ImageBindModel``."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.eval()

    def embed(self, _modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(x)


def _modality(value: Any) -> Modality | ExtensionName:
    return value if is_extension(value) else Modality(value)


def _kind(value: Any) -> Kind | ExtensionName:
    return value if is_extension(value) else Kind(value)


def view_budgets(device_type: str) -> dict[Modality, int]:
    """Model views per batch for each modality on a device: the registry's sizes (which
    suit a CPU), times ``CUDA_BATCH_FACTOR`` on CUDA. The encoder cuts its batches by
    these and the batchers that feed it fill them (``pipeline.KeyedBatcher``)."""
    factor = CUDA_BATCH_FACTOR if device_type == "cuda" else 1
    return {m: spec(m).batch_size * factor for m in Modality}


def _positive(n: int) -> int:
    if n < 1:
        raise ValueError(f"batch sizes must be >= 1, got {n}")
    return n
