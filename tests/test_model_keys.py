"""Our module tree has exactly the official checkpoint's keys, shapes and kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embed_workers.model import ImageBindModel, get_preset, huge_config
from schemas import Modality

KEYS_TSV = Path(__file__).parent / "data" / "imagebind_huge_keys.tsv"


def _reference_keys() -> dict[str, tuple[list[int], str]]:
    rows = (line.split("\t") for line in KEYS_TSV.read_text().splitlines() if line.strip())
    return {key: (eval_shape(shape), kind) for key, shape, kind in rows}


def eval_shape(text: str) -> list[int]:
    inner = text.strip()[1:-1].strip()
    return [int(n) for n in inner.split(",")] if inner else []


def _meta_model(modalities=None) -> ImageBindModel:
    with torch.device("meta"):
        return ImageBindModel(huge_config(), modalities)


def test_huge_has_exactly_the_checkpoint_keys_and_shapes() -> None:
    expected = _reference_keys()
    state = _meta_model().state_dict()
    assert len(expected) == 1311
    assert set(state) == set(expected)
    wrong = {k: (list(v.shape), expected[k][0]) for k, v in state.items()
             if list(v.shape) != expected[k][0]}
    assert wrong == {}


def test_parameters_and_buffers_match_the_checkpoint_kinds() -> None:
    expected = _reference_keys()
    model = _meta_model()
    params = {name for name, _ in model.named_parameters()}
    kinds = {key: "P" if key in params else "B" for key in model.state_dict()}
    assert kinds == {key: kind for key, (_, kind) in expected.items()}


def test_huge_parameter_count() -> None:
    model = _meta_model()
    assert sum(p.numel() for p in model.parameters()) == 1_200_781_057


@pytest.mark.parametrize("modality", list(Modality))
def test_single_modality_model_holds_only_its_keys(modality: Modality) -> None:
    expected = {k for k in _reference_keys() if k.split(".")[1] == modality.value}
    assert set(_meta_model([modality]).state_dict()) == expected


def test_token_counts_are_the_same_in_every_preset() -> None:
    counts = {Modality.VISION: 257, Modality.TEXT: 77, Modality.AUDIO: 229,
              Modality.DEPTH: 197, Modality.THERMAL: 197, Modality.IMU: 251}
    for name in ("imagebind_huge", "imagebind_tiny", "imagebind_mid"):
        config = get_preset(name).config
        assert {m: config.token_count(m) for m in Modality} == counts, name
        assert config.out_dim == 1024


def test_unknown_or_unbuilt_modality_is_a_clear_error() -> None:
    model = _meta_model(["depth"])
    with pytest.raises(KeyError, match="was not built"):
        model.modality("vision")
    with pytest.raises(ValueError):
        model.modality("smell")
    with pytest.raises(ValueError, match="at least one"):
        ImageBindModel(huge_config(), [])
