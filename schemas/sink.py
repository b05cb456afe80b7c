"""The small protocol executors write through (DESIGN.md §2).

``search.store`` implements it; the caller (flow or CLI) hands an instance to
the executor, so ``embed_workers`` never imports ``search``.

The Ray executor writes from its committer actor, not from the process that
holds the sink: a sink it may use also offers ``lend()``, a context manager
yielding a picklable zero-argument opener that opens the same sink (with
``ledger()`` and ``close()``) in the borrowing process (``VectorStore.lend``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from schemas.records import EmbeddingRecord

# What a process that holds an embedded store says it is, in the store's lock file
# (``search.backends.lock``): a Ray run's committer names its driver there, so a
# rerun after the driver died waits for the committer to go instead of failing.
HOLDER_ENV = "MEDIABIND_STORE_HOLDER"


def pid_space() -> str:
    """Where a pid names one process: the host name and, on Linux, the pid namespace
    (two containers may share a host name, never a pid namespace). Two processes may
    test each other's pids for life only when their ``pid_space()`` is equal."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{namespace.removeprefix('pid:[').rstrip(']')}"


@runtime_checkable
class PointSink(Protocol):
    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        """Idempotent upsert of a batch (same point id → overwritten)."""

    def completed_items(self, item_ids: Iterable[str]) -> set[str]:
        """The given items whose file-level point(s) are stored: nothing left to do."""

    def add_locations(self, item_id: str, source_uris: Sequence[str]) -> None:
        """Remember more paths for stored bytes (a duplicate seen at a new path)."""

    def forget_locations(self, item_id: str, source_uris: Sequence[str]) -> int:
        """These paths hold other bytes now: drop them from the item, and the item itself
        when no path is left; returns the points removed."""
