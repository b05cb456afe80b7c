"""Parity with the reference ImageBind code on random weights (fp32, CPU).

The reference model is built at the tiny preset's dimensions, every tensor
is randomised (biases, LayerNorms and logit scales included, so none of them
can hide behind a zero or one), and its state_dict is loaded into ours with
``strict=True`` and no renaming.
"""

from __future__ import annotations

import pytest
import torch

from embed_workers.model import ImageBindModel, get_preset
from schemas import Modality

reference_imagebind = pytest.importorskip("reference_imagebind")
TOLERANCE = 1e-5
EOT = 49407


def _randomise_(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    for key, tensor in state.items():
        if key.endswith("text.mask"):
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if key.endswith("log_logit_scale"):
            tensor.add_(0.3 * noise)  # keeps text under its cap of 100
        elif key.endswith(("norm_1.weight", "norm_2.weight", "norm_layer.weight",
                           ".0.weight")) and tensor.ndim == 1:
            tensor.copy_(1.0 + 0.1 * noise)
        else:
            tensor.copy_(0.05 * noise)
    return state


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, ImageBindModel]:
    torch.manual_seed(0)
    config = get_preset("imagebind_tiny").config
    reference = reference_imagebind.build_reference_model(config)
    with torch.no_grad():
        _randomise_(reference.state_dict(), seed=1)
    ours = ImageBindModel(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _text_ids(lengths: list[int], generator: torch.Generator) -> torch.Tensor:
    """Token ids with SOT, random words, and EOT at the end of each length (max 77)."""
    ids = torch.zeros(len(lengths), 77, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1, EOT - 1, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = EOT - 1, EOT
    return ids


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(3, 3, 224, 224, generator=g),
        "video": torch.randn(2, 3, 3, 2, 224, 224, generator=g),  # [B, clips×crops, C, T, H, W]
        "audio": torch.randn(2, 3, 1, 128, 204, generator=g),  # [B, clips, 1, mel, frames]
        "text": _text_ids([2, 9, 40, 77], g),
        "depth": torch.randn(2, 1, 224, 224, generator=g),
        "thermal": torch.randn(2, 1, 224, 224, generator=g),
        "imu": torch.randn(2, 6, 2000, generator=g),
    }


CASES = {  # case name → modality key
    "images": Modality.VISION, "video": Modality.VISION, "audio": Modality.AUDIO,
    "text": Modality.TEXT, "depth": Modality.DEPTH, "thermal": Modality.THERMAL,
    "imu": Modality.IMU,
}


def _both(models, case: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    reference, ours = models
    key = CASES[case].value
    with torch.no_grad():
        return reference({key: x})[key], ours({key: x})[key]


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_reference(models, case: str) -> None:
    x = _inputs(seed=2)[case]
    expected, got = _both(models, case, x)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape == (x.shape[0], 1024)
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert (expected[0] - expected[1]).abs().max().item() > 100 * TOLERANCE  # inputs matter


@pytest.mark.parametrize("modality", list(Modality))
def test_a_perturbed_weight_breaks_parity(models, modality: Modality) -> None:
    reference, ours = models
    case = next(c for c, m in CASES.items() if m == modality)
    x = _inputs(seed=3)[case]
    expected, _ = _both(models, case, x)
    perturbed = ImageBindModel(ours.config, [modality]).eval()
    state = {k: v for k, v in ours.state_dict().items() if k.split(".")[1] == modality.value}
    perturbed.load_state_dict(state, strict=True)
    with torch.no_grad():
        weight = perturbed.modality_trunks[modality.value].blocks[0].attn.in_proj_weight
        signs = torch.randint(0, 2, weight.shape, generator=torch.Generator().manual_seed(5))
        weight.add_(1e-3 * (2.0 * signs - 1.0))  # ±1e-3: a uniform shift is mostly normalised away
        got = perturbed({modality.value: x})[modality.value]
    assert (got - expected).abs().max().item() > 2 * TOLERANCE


def test_text_pools_at_the_end_token(models) -> None:
    """Changing a token after EOT (padding) must not change the vector; before EOT it must."""
    ids = _text_ids([10], torch.Generator().manual_seed(4)).repeat(2, 1)
    ids[1, 20] = 123  # after EOT: masked out by causality and never pooled
    _, ours = models
    with torch.no_grad():
        after = ours({"text": ids})["text"]
        ids[1, 5] = 321
        before = ours({"text": ids})["text"]
    assert torch.allclose(after[0], after[1], atol=TOLERANCE)
    assert (before[0] - before[1]).abs().max().item() > 100 * TOLERANCE
