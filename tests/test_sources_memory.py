"""Streaming a large archive keeps memory flat and leaves no spool files behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest
from hostile import big_random_tar, run_source, write_tar

from ingest.sources import SourceEntry, iter_source
from schemas import Kind, Settings

MEMBERS = 3
MEMBER_BYTES = 100 << 20  # 300 MB of incompressible data in all
ALLOWED_GROWTH = 64 << 20


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_large_tar_streams_with_flat_memory(tmp_path: Path):
    settings = Settings(home=tmp_path / "home", max_member_bytes=MEMBER_BYTES)
    # Warm up: imports and first-use allocations must not count as growth.
    run_source(write_tar(tmp_path / "small.tar", {"a.bin.mp4": b"\x00" * 10}), settings)
    # Named as IMU arrays: the naming convention accepts them without a content check.
    source = big_random_tar(tmp_path / "big.tar", MEMBERS, MEMBER_BYTES, ".imu.npy")
    baseline = psutil.Process().memory_info().rss
    seen = []
    with PeakRss() as rss:
        for entry in iter_source(source, settings):
            assert isinstance(entry, SourceEntry), entry
            assert entry.path.stat().st_size == MEMBER_BYTES
            seen.append(entry.item.item_id)
            entry.release()
            assert not entry.path.exists()
    assert len(set(seen)) == MEMBERS
    assert rss.peak - baseline < ALLOWED_GROWTH, f"RSS grew {(rss.peak - baseline) >> 20} MiB"
    assert list((settings.home / "tmp").iterdir()) == []


def test_members_stream_one_at_a_time(tmp_path: Path):
    """The stream holds back at most one entry: spool files never pile up."""
    settings = Settings(home=tmp_path / "home")
    files = {f"note{i}.txt": f"note {i}".encode() for i in range(6)}
    spool = settings.home / "tmp"
    for entry in iter_source(write_tar(tmp_path / "a.tgz", files), settings):
        assert entry.item.kind is Kind.TEXT
        assert len(list(spool.iterdir())) <= 2  # this one and the one read ahead
        entry.release()
