"""``ImageBindModel``: our own implementation, laid out like the official checkpoint.

Four ``ModuleDict``s keyed by modality name (``modality_preprocessors``,
``modality_trunks``, ``modality_heads``, ``modality_postprocessors``) hold only
the modalities asked for, so a vision-only worker never allocates the text
tower. ``state_dict()`` keys equal ``imagebind_huge.pth``'s for those modalities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embed_workers.model.config import PRE_NORM_TRUNKS, ImageBindConfig
from embed_workers.model.heads import HEAD_BUILDERS, build_postprocessor
from embed_workers.model.layers import Trunk
from embed_workers.model.stems import PREPROCESSOR_BUILDERS
from schemas import Modality

# Inputs with at least this many dims carry several views per item at dim 1
# ([B, S, ...]): video clips × crops, audio clips. Same rule as the reference.
VIEWS_NDIM = 5


class ImageBindModel(nn.Module):
    """The ImageBind encoders for the requested modalities (all six by default)."""

    def __init__(self, config: ImageBindConfig,
                 modalities: Iterable[Modality | str] | None = None) -> None:
        super().__init__()
        self.config = config
        wanted = {Modality(m) for m in (modalities if modalities is not None else config.trunks)}
        chosen = [m for m in Modality if m in wanted]  # canonical order, whatever was asked
        if not chosen:
            raise ValueError("ImageBindModel needs at least one modality")
        widths = {m: config.trunk(m).width for m in chosen}
        self.modality_preprocessors = nn.ModuleDict(
            {m.value: PREPROCESSOR_BUILDERS[m](config, widths[m]) for m in chosen})
        self.modality_trunks = nn.ModuleDict(
            {m.value: Trunk(config.trunk(m), config, m in PRE_NORM_TRUNKS) for m in chosen})
        self.modality_heads = nn.ModuleDict(
            {m.value: HEAD_BUILDERS[m](config, widths[m]) for m in chosen})
        self.modality_postprocessors = nn.ModuleDict(
            {m.value: build_postprocessor(m) for m in chosen})

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return tuple(Modality(m) for m in self.modality_trunks)

    def modality(self, name: Modality | str) -> Modality:
        """The built modality called ``name``, or a clear error."""
        modality = Modality(name)
        if modality.value not in self.modality_trunks:
            built = ", ".join(m.value for m in self.modalities)
            raise KeyError(f"modality {modality.value!r} was not built (this model has: {built})")
        return modality

    def encode_views(self, modality: Modality | str, x: Tensor) -> Tensor:
        """Head outputs, one row per view: ``[N, ...] → [N, out_dim]`` float32, unnormalised.

        Floating inputs are moved to the model's device and dtype; ids stay int64.
        """
        name = self.modality(modality).value
        pre = self.modality_preprocessors[name](self._to_model(name, x))
        tokens = self.modality_trunks[name](pre.tokens, pre.mask)
        return self.modality_heads[name](tokens, pre.pool_index).float()

    def forward(self, inputs: Mapping[Modality | str, Tensor]) -> dict[str, Tensor]:
        """The reference outputs: L2-normalise, × logit scale, then mean over views.

        Vision vectors are unit-norm; text is scaled by its learned factor,
        audio by 20, depth 5, thermal 10, IMU 5. Inputs with ndim >= 5 are
        ``[B, S, ...]`` and averaged over S after scaling, so they are not unit
        norm. This is the form for softmax-style scores; use ``embed`` for
        vectors to store.
        """
        outputs: dict[str, Tensor] = {}
        for name, x in inputs.items():
            modality = self.modality(name)
            flat, views = split_views(x)
            scaled = self.modality_postprocessors[modality.value](self.encode_views(modality, flat))
            outputs[modality.value] = scaled if views is None else scaled.unflatten(0, (-1, views)).mean(1)
        return outputs

    @torch.no_grad()
    def embed(self, modality: Modality | str, x: Tensor) -> Tensor:
        """Vectors to store: float32 ``[N, out_dim]``, unit L2 norm.

        Each view is L2-normalised, the views of an item (dim 1 when ndim >= 5)
        are averaged, and the mean is renormalised. The logit scale is a
        constant per modality, so it cancels; the scaled, unnormalised form is
        what ``forward`` returns.
        """
        flat, views = split_views(x)
        unit = F.normalize(self.encode_views(modality, flat), dim=-1)
        if views is None:
            return unit
        return F.normalize(unit.unflatten(0, (-1, views)).mean(1), dim=-1)

    def _to_model(self, name: str, x: Tensor) -> Tensor:
        reference = next(self.modality_preprocessors[name].parameters())
        if x.is_floating_point():
            return x.to(device=reference.device, dtype=reference.dtype)
        return x.to(device=reference.device)


def split_views(x: Tensor) -> tuple[Tensor, int | None]:
    """``[B, S, ...] → ([B*S, ...], S)`` when ndim >= 5, else ``(x, None)``."""
    if x.ndim < VIEWS_NDIM:
        return x, None
    return x.flatten(0, 1), x.shape[1]
