"""Search: the Qdrant store (``search.store``) and the analysts' API (``MediaSearch``).

    from search import MediaSearch
    with MediaSearch() as ms:
        print(ms.search("a dog barking", kinds="video"))
"""

from __future__ import annotations

from typing import Any

from search.client import MediaSearch, ModelMismatchError
from search.results import Hit, Moment, SearchResults

__all__ = ["Hit", "MediaSearch", "ModelMismatchError", "Moment", "SearchResults", "open_store"]


def __getattr__(name: str) -> Any:
    # The store pulls in the Qdrant engines: import it only when asked for.
    if name == "open_store":
        from search.store import open_store

        return open_store
    raise AttributeError(f"module 'search' has no attribute {name!r}")
