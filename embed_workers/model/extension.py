"""The encoder of a modality extension: stem, trunk, head, postprocessor of our blocks.

``series`` extensions patch like IMU (``window`` samples × all channels per
token, Linear → LayerNorm); ``map`` extensions patch like depth/thermal (a
``patch`` × ``patch`` Conv2d over one channel → LayerNorm). Both prepend a CLS
token and add learned positions; the trunk is our transformer (bias_kv, as
ImageBind's non-vision trunks), the head pools CLS → LayerNorm → Linear to the
joint space, and the postprocessor L2-normalises and scales by 1/temperature.

Weights are a flat safetensors state dict (``save_weights``/``load_weights``):
data only, never unpickled.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embed_workers.model.config import ImageBindConfig, TrunkConfig
from embed_workers.model.heads import _cls_head
from embed_workers.model.layers import L2Normalize, LogitScale, SelfAttention, Trunk
from embed_workers.model.stems import PatchPreprocessor, PatchStem, SeriesPreprocessor
from schemas.extension import ExtensionError, ExtensionSpec

INIT_STD = 0.02
_EPS = ImageBindConfig()  # layer-norm epsilons shared with the built-in trunks


class ExtensionEncoder(nn.Module):
    """One new modality's encoder; ``embed`` gives unit vectors in the joint space."""

    def __init__(self, spec: ExtensionSpec) -> None:
        super().__init__()
        self.spec = spec
        width = spec.trunk.width
        self.preprocessor = _preprocessor(spec, width)
        trunk = TrunkConfig(width, spec.trunk.depth, spec.trunk.heads, bias_kv=True)
        self.trunk = Trunk(trunk, _EPS, pre_norm=False)
        self.head = _cls_head(replace(_EPS, out_dim=spec.out_dim), width)
        self.postprocessor = nn.Sequential(
            L2Normalize(), LogitScale(math.log(1 / spec.temperature), False, 1 / spec.temperature))
        mean = torch.tensor(spec.normalisation.mean, dtype=torch.float32)
        std = torch.tensor(spec.normalisation.std, dtype=torch.float32)
        self.register_buffer("input_mean", _broadcast(mean, spec))
        self.register_buffer("input_std", _broadcast(std, spec))

    def encode(self, x: Tensor) -> Tensor:
        """Head outputs ``[B, out_dim]`` of raw views ``[B, *geometry.shape]`` (unnormalised)."""
        expected = self.spec.geometry.shape(self.spec.layout)
        if self.spec.layout == "map" and x.ndim == 3:
            x = x.unsqueeze(1)  # maps arrive as [B,H,W] (ingest's segments), one channel
        if tuple(x.shape[1:]) != expected:
            raise ExtensionError(f"{self.spec.name} input is {list(x.shape[1:])} per view; "
                                 f"the extension takes {list(expected)}")
        reference = self.input_mean
        x = (x.to(reference.device, reference.dtype) - self.input_mean) / self.input_std
        pre = self.preprocessor(x)
        return self.head(self.trunk(pre.tokens, pre.mask), pre.pool_index).float()

    def forward(self, x: Tensor) -> Tensor:
        """Training form: unit vectors × 1/temperature."""
        return self.postprocessor(self.encode(x))

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Vectors to store: float32 ``[B, out_dim]``, unit L2 norm."""
        return F.normalize(self.encode(x), dim=-1)


def _preprocessor(spec: ExtensionSpec, width: int) -> nn.Module:
    g = spec.geometry
    tokens = g.tokens(spec.layout)
    if spec.layout == "series":
        return SeriesPreprocessor(g.channels, g.window, tokens, width, _EPS.stem_norm_eps,
                                  stem_name="stem", label=spec.name)
    conv = nn.Conv2d(1, width, g.patch, stride=g.patch, bias=False)
    stem = PatchStem(conv, nn.LayerNorm(width, eps=_EPS.stem_norm_eps))
    return PatchPreprocessor(spec.name, "stem", stem, tokens, width)


def _broadcast(values: Tensor, spec: ExtensionSpec) -> Tensor:
    """Per-channel statistics shaped to broadcast over one view."""
    if spec.layout == "series":
        return values.reshape(-1, 1)  # [C or 1, 1]
    return values.reshape(1, 1, 1)


@torch.no_grad()
def init_weights_(model: ExtensionEncoder, seed: int) -> ExtensionEncoder:
    """From-scratch initialisation: small tokens, Xavier projections, unit LayerNorms."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith(("cls_token", "pos_embed", "bias_k", "bias_v")):
            param.copy_(INIT_STD * torch.randn(param.shape, generator=generator))
        elif param.ndim >= 2:
            bound = math.sqrt(6.0 / (param.shape[0] + math.prod(param.shape[1:])))
            param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
        elif name.endswith("weight"):  # LayerNorm gains
            param.fill_(1.0)
        else:
            param.zero_()
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.in_proj_bias.zero_()
    return model


# --- weights as data --------------------------------------------------------------------

def state_tensors(model: ExtensionEncoder) -> dict[str, Tensor]:
    """The weights to ship: parameters and persistent buffers, contiguous CPU float32."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}


def save_weights(model: ExtensionEncoder, path: Path) -> str:
    """Write ``path`` (safetensors); return the sha256 of the file."""
    from safetensors.torch import save_file

    save_file(state_tensors(model), str(path), metadata={"license": model.spec.license})
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_weights(spec: ExtensionSpec, path: Path) -> ExtensionEncoder:
    """An encoder for ``spec`` with the weights at ``path`` (strict: every key, every shape)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ExtensionError(f"{path}: cannot read the weights ({exc})") from None
    model = ExtensionEncoder(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExtensionError(f"{path}: weights do not fit the spec of {spec.name!r}: {exc}") from None
    return model.eval()
