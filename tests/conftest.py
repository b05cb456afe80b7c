"""Shared pytest fixtures (each helper appends its own below)."""

from __future__ import annotations

import pytest
from media import MediaLibrary

from schemas import SegmentPolicy, Settings


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> MediaLibrary:
    """Generated test media (tests/media.py), made once per session on first use."""
    return MediaLibrary(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def decode_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Default settings with a short ffmpeg timeout, isolated from the user's home."""
    return Settings(home=tmp_path_factory.mktemp("home"), ffmpeg_timeout_s=60)


@pytest.fixture(scope="session")
def policy() -> SegmentPolicy:
    return SegmentPolicy()

