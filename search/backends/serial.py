"""One call at a time into an embedded engine, from any number of threads.

The embedded engines admit one process (``search.backends.lock``), and neither
promises that two threads may call into one open store at once. A web server
answers many requests in threads, a run plans in one thread while it writes
from another: so every embedded backend is handed out behind one re-entrant
lock (``open_backend``), which makes reads and writes safe wherever the store
is used, not only where a caller remembered to lock. A Qdrant server needs no
such lock; its client is used as it is.

Every backend method returns plain values (lists, dicts, counts), never a lazy
iterator, so holding the lock for the call covers all its engine work.
"""

from __future__ import annotations

import functools
import threading
from typing import Any


class Serialised:
    """``backend``'s methods, each called under one lock; attributes read through."""

    def __init__(self, backend: Any) -> None:
        self._inner = backend
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def serialised(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return serialised

    def __repr__(self) -> str:
        return repr(self._inner)
