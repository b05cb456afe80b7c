"""`mediabind info`: reports settings, checkpoint and store state without failing."""

import json

import pytest

from flows.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path))
    monkeypatch.delenv("MEDIABIND_CHECKPOINT", raising=False)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    return tmp_path


def test_info_on_a_fresh_home_says_what_is_missing(home, capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "imagebind_huge" and info["store"] == "edge"
    assert info["checkpoint"].startswith("missing:") and "ACCEPT_LICENSE" in info["checkpoint"]
    assert "error" in info["collection_status"]  # nothing ingested yet: reported, not raised
    assert not (home / "checkpoints").exists()  # a lookup never downloads


def test_info_finds_a_checkpoint_in_the_cache(home, capsys):
    (home / "checkpoints").mkdir()
    (home / "checkpoints" / "imagebind_huge.pth").write_bytes(b"x")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert str(home / "checkpoints" / "imagebind_huge.pth") in out


def test_the_configuration_reference_in_docs_matches_the_settings(capsys):
    from pathlib import Path

    assert main(["info", "--config-reference"]) == 0
    generated = capsys.readouterr().out
    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == generated, "regenerate: mediabind info --config-reference"
    assert "`MEDIABIND_ACCEPT_LICENSE`" in generated and "`QDRANT_URL`" in generated
