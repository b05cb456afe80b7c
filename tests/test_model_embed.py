"""``embed()`` (what we store), seeded preset weights, precision casting, input errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embed_workers.model import build_model, get_preset
from embed_workers.model.precision import cast_for_inference, resolve_dtype
from schemas import Modality

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return build_model(get_preset("imagebind_tiny"))


def _example(modality: Modality, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    shapes = {Modality.VISION: (3, 224, 224), Modality.AUDIO: (1, 128, 204),
              Modality.DEPTH: (1, 224, 224), Modality.THERMAL: (1, 224, 224),
              Modality.IMU: (6, 2000)}
    if modality == Modality.TEXT:
        ids = torch.zeros(batch, 77, dtype=torch.long)
        ids[:, 0], ids[:, 1:4] = 49406, torch.randint(1, 49000, (batch, 3), generator=g)
        ids[:, 4] = 49407
        return ids
    return torch.randn(batch, *shapes[modality], generator=g)


@pytest.mark.parametrize("modality", list(Modality))
def test_embed_is_unit_norm_float32(tiny, modality: Modality) -> None:
    vectors = tiny.embed(modality, _example(modality, batch=3))
    assert vectors.dtype == torch.float32 and vectors.shape == (3, 1024)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("views_shape", [(2, 3, 3, 2, 224, 224), (2, 3, 1, 128, 204)])
def test_embed_averages_normalised_views_and_renormalises(tiny, views_shape) -> None:
    modality = Modality.VISION if views_shape[2] == 3 else Modality.AUDIO
    x = torch.randn(*views_shape, generator=torch.Generator().manual_seed(8))
    per_view = F.normalize(tiny.encode_views(modality, x.flatten(0, 1)), dim=-1).unflatten(0, (2, 3))
    expected = F.normalize(per_view.mean(1), dim=-1)
    got = tiny.embed(modality, x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, per_view[:, 0], atol=1e-4)  # the views really differ
    # forward's scaled mean points the same way
    scaled = tiny({modality.value: x})[modality.value]
    assert torch.allclose(F.normalize(scaled, dim=-1), got, atol=1e-6)


def test_forward_keeps_the_reference_scales(tiny) -> None:
    out = tiny({m.value: _example(m) for m in Modality})
    norms = {m: out[m].norm(dim=-1).mean().item() for m in out}
    expected = {"vision": 1.0, "text": 1 / 0.07, "audio": 20.0, "depth": 5.0,
                "thermal": 10.0, "imu": 5.0}
    assert norms == pytest.approx(expected, rel=1e-4)


def test_subset_model_has_the_same_seeded_weights(tiny) -> None:
    audio_only = build_model(get_preset("imagebind_tiny"), modalities=["audio"])
    x = _example(Modality.AUDIO)
    assert torch.equal(audio_only.embed("audio", x), tiny.embed("audio", x))


@pytest.mark.slow  # a fresh interpreter importing torch takes ~10 s on shared CI cores
def test_seeded_weights_are_identical_in_another_process(tiny) -> None:
    script = (
        "import torch\n"
        "from embed_workers.model import build_model, get_preset\n"
        "m = build_model(get_preset('imagebind_tiny'), modalities=['depth', 'text'])\n"
        "print(repr(float(sum(t.double().sum() for t in m.state_dict().values()))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    here = {k: v for k, v in tiny.state_dict().items() if k.split(".")[1] in ("depth", "text")}
    mine = float(sum(t.double().sum() for t in here.values()))
    assert float(result.stdout.strip()) == mine


def test_bf16_compute_keeps_postprocessing_and_outputs_float32() -> None:
    model = build_model(get_preset("imagebind_tiny"), modalities=["vision", "audio"])
    x = _example(Modality.VISION)
    reference = model.embed("vision", x)
    cast_for_inference(model, "cpu", torch.bfloat16)
    assert model.modality_trunks["vision"].blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert model.modality_postprocessors["audio"][1].log_logit_scale.dtype == torch.float32
    got = model.embed("vision", x)
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got, reference).min().item() > 0.99


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))


def test_wrong_input_shapes_are_clear_errors(tiny) -> None:
    with pytest.raises(ValueError, match="tokens but the model has"):
        tiny.embed("vision", torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match="text ids must be"):
        tiny.embed("text", torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="frames"):
        tiny.embed("vision", torch.randn(1, 1, 3, 4, 224, 224))
