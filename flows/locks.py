"""One run per source at a time: a file lock, and a Prefect global concurrency limit.

Two layers, because they cover different failures:

- ``source_lock``: an exclusive ``flock`` on ``HOME/locks/<key>.lock``. Works
  with no server at all, and across every process of one machine (or of a
  shared volume). The lock dies with its process, so a killed run never
  leaves a stale lock behind.
- ``source_slot``: a Prefect global concurrency limit named
  ``mediabind-source-<key>`` with one slot, taken only when a real Prefect
  server is configured (``PREFECT_API_URL``): it serialises runs on different
  machines that share the server. Without a server each process would start
  its own temporary one, which coordinates nothing, so it is skipped.

``key`` is a hash of the normalised source, so ``/data/a/`` and ``/data/a``
share a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ingest.sources import source_key
from schemas import Settings

# How long a run waits for another run of the same source before giving up: for the
# file lock, and for the global slot (a round trip to the Prefect server each try, so
# it keeps its own, unshortened wait).
BUSY_WAIT_S = 10.0
SLOT_WAIT_S = 10.0
POLL_S = 0.2
SLOT_PREFIX = "mediabind-source-"


class SourceBusyError(RuntimeError):
    """Another run holds the source; this one did not start."""


def lock_path(settings: Settings, source: str) -> Path:
    return settings.home / "locks" / f"{source_key(source)}.lock"


@contextmanager
def source_lock(settings: Settings, source: str, wait_s: float | None = None) -> Iterator[Path]:
    """Hold the machine-wide lock of ``source``; SourceBusyError if it stays taken."""
    wait_s = BUSY_WAIT_S if wait_s is None else wait_s
    path = lock_path(settings, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_within(fd, wait_s, path, source)
        _write_holder(fd, source)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _flock_within(fd: int, wait_s: float, path: Path, source: str) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise SourceBusyError(
                    f"another run is already ingesting {source} (lock {path}, held by "
                    f"{_read_holder(path)}); this run did not start") from None
            time.sleep(POLL_S)


def _write_holder(fd: int, source: str) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "source": source,
              "since": datetime.now(UTC).isoformat()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _read_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def server_configured() -> bool:
    """Whether PREFECT_API_URL names a server (not the per-process temporary one)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def slot_name(source: str) -> str:
    return SLOT_PREFIX + source_key(source)


@contextmanager
def source_slot(source: str, wait_s: float | None = None) -> Iterator[str | None]:
    """Hold the one slot of the source's global concurrency limit (None: no server)."""
    wait_s = SLOT_WAIT_S if wait_s is None else wait_s
    if not server_configured():
        yield None
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    name = slot_name(source)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    try:
        with concurrency(name, occupy=1, timeout_seconds=wait_s, strict=True):
            yield name
    except AcquireConcurrencySlotTimeoutError as exc:  # raised only while acquiring
        raise SourceBusyError(f"another run holds the concurrency limit {name!r} of {source}; "
                              "this run did not start") from exc
