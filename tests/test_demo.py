"""The main job: the sample archive, the model choice, and `python -m flows.demo` end to end."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from flows import demo, sample
from schemas import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_without_weights_the_tiny_model_is_chosen(tmp_path):
    assert demo.choose_preset(Settings(home=tmp_path)) == demo.TEST_PRESET


def test_cached_weights_or_an_accepted_licence_choose_imagebind_huge(tmp_path):
    assert demo.choose_preset(Settings(home=tmp_path, accept_license=True)) == demo.REAL_PRESET
    cached = Settings(home=tmp_path)
    cached.checkpoint_dir.mkdir(parents=True)
    (cached.checkpoint_dir / "imagebind_huge.pth").write_bytes(b"weights")
    assert demo.choose_preset(cached) == demo.REAL_PRESET
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"weights")
    assert demo.choose_preset(Settings(home=tmp_path / "x", checkpoint=explicit)) == demo.REAL_PRESET


def test_a_missing_explicit_checkpoint_fails_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path))
    monkeypatch.setenv("MEDIABIND_CHECKPOINT", str(tmp_path / "missing.pth"))
    monkeypatch.setattr(demo, "get_settings", Settings)
    assert demo.main([]) == 1
    assert "MEDIABIND_CHECKPOINT" in capsys.readouterr().err


def member_digests(archive: Path) -> dict[str, str]:
    with tarfile.open(archive) as tar:
        return {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                for m in tar.getmembers() if m.isfile()}


@pytest.mark.slow
def test_sample_archive_holds_every_kind_and_rebuilds_bit_exact(tmp_path):
    settings = Settings(home=tmp_path)
    archive = sample.build_sample(settings)
    digests = member_digests(archive)
    assert set(sample.CLIPS) <= set(digests) and "text/captions.txt" in digests
    assert sum(name.startswith("images/") for name in digests) >= 3
    first = archive.read_bytes()
    assert sample.build_sample(settings, force=True).read_bytes() == first
    queries = sample.sample_dir(settings) / "queries"
    assert {p.name for p in queries.iterdir()} >= set(sample.QUERY_CLIPS) | {"photos"}


def readme_command(label: str) -> str:
    """The README's set-up command whose comment starts with ``label``."""
    for line in (ROOT / "README.md").read_text().splitlines():
        command, _, comment = line.partition("#")
        if comment.strip().startswith(label):
            return command.strip()
    raise AssertionError(f"README has no command commented {label!r}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_readme_main_job_runs_in_a_clean_checkout(tmp_path):
    """The README's first command, exactly as written, in a fresh clone of the repo.

    The venv of this test run is reused (MEDIABIND_VENV) so nothing is
    reinstalled; everything else starts empty: checkout, home, Prefect.
    """
    command = readme_command("the main job")
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDIABIND_", "QDRANT_", "PREFECT_API_URL"))}
    env |= {"MEDIABIND_HOME": str(tmp_path / "home"), "MEDIABIND_VENV": sys.prefix,
            "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == demo.TINY_BANNER  # before anything else
    home = Settings(home=tmp_path / "home")
    for query in demo.demo_queries(sample.sample_dir(home) / "queries"):
        assert f"== {query.title}" in done.stdout
    files = len(member_digests(sample.sample_dir(home) / sample.ARCHIVE_NAME))
    assert f"ingested through the flow: {files} new items" in done.stdout
    assert "video/beep.mp4" in done.stdout and "images/" in done.stdout
    assert "installing Python packages" not in done.stderr  # the test venv was reused
