"""One process per embedded store folder, with an error that says who holds it.

Both embedded engines lock their folder themselves, but their messages
("Can't init WAL: Kind(WouldBlock)") do not tell the user what to do. We take
our own advisory lock first and record the holder's pid and command line.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import time
from pathlib import Path

from schemas.sink import HOLDER_ENV, pid_space

LOCK_NAME = ".mediabind.lock"
ORPHAN_WAIT_S = 30.0
ORPHAN = re.compile(r"committer of driver pid (\d+) on (\S+)$")


class StoreLockedError(RuntimeError):
    """Another process has this embedded store open."""


def _orphaned(holder: str) -> bool:
    """The holder is a Ray run's committer (``HOLDER_ENV``) whose driver, in this pid
    space, is gone: it lets go within moments (it follows its driver out)."""
    found = ORPHAN.search(holder)
    if found is None or found.group(2) != pid_space():
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class DirLock:
    """An exclusive, non-blocking flock on ``<folder>/.mediabind.lock``; released on close."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._holder()
                if _orphaned(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)  # a committer whose driver died: it is on its way out
                    continue
            os.close(self._fd)
            self._fd = None
            raise StoreLockedError(
                f"another mediabind process ({holder}) holds the embedded store {folder}; "
                "stop it, or use a Qdrant server (set QDRANT_URL) when several processes "
                "must read or write at once") from None
        self._write_holder()

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "pid unknown"

    def _write_holder(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        role = os.environ.get(HOLDER_ENV) or " ".join(sys.argv)[:200]
        info = f"pid {os.getpid()} on {socket.gethostname()}: {role}"
        os.pwrite(self._fd, info.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
