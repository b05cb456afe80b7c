"""Staged encode output: each block an encode actor returns is written here first.

An encode actor writes its output block (segment rows with their vectors, and
the markers that rode with them) as one Parquet part *before* returning it.
So GPU work survives the driver: a run that dies leaves its parts behind, and
the next run of the same source into the same collection commits them
(``executors.ray_replay``) before it plans, then reads and encodes only what
they do not cover. A run that ends removes the parts of its source.

Where: ``MEDIABIND_STAGING_URL``, any fsspec URL that the driver and every
node reach (a shared filesystem, object storage). Without one, parts go to
``MEDIABIND_HOME/staging`` when every node of the cluster is the driver's own
machine, and are not written otherwise (a worker's local disk would be lost
to the driver), which the run's report notes.

Layout: ``<root>/<collection>/<source key>/<digest>.parquet``. A source's
folder belongs to one run at a time, because runs of one source hold its lock
(``flows.locks``). A part is named by a digest of the rows it holds, so an
encode that Ray retries writes the same part again, never a second copy. It is
written under a temporary name and renamed, so a part is whole or absent.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.sources import source_key

PART_SUFFIX = ".parquet"
# The columns that name a row; vectors and timings differ between two encodes of one block.
IDENTITY_COLUMNS = ("event", "key", "attempt", "item_id", "modality", "blob")


@dataclass(frozen=True, slots=True)
class Staging:
    """The staging folder of one source in one collection (plain data: it travels to actors)."""

    url: str

    @classmethod
    def at(cls, root: str, collection: str, source: str) -> Staging:
        return cls(f"{root.rstrip('/')}/{collection}/{source_key(source)}")

    def _fs(self):  # noqa: ANN202 - fsspec's filesystem
        from fsspec.core import url_to_fs

        return url_to_fs(self.url)

    def write(self, table: pa.Table) -> str:
        """Write one block as a part; returns its path (an existing part is replaced)."""
        fs, folder = self._fs()
        fs.makedirs(folder, exist_ok=True)
        final = f"{folder}/{part_name(table)}"
        temporary = f"{folder}/.{uuid.uuid4().hex}.tmp"
        with fs.open(temporary, "wb") as out:
            pq.write_table(table, out)
        fs.mv(temporary, final)
        return final

    def parts(self) -> list[str]:
        """The whole parts here, in name order (a temporary left by a crash is not one)."""
        fs, folder = self._fs()
        if not fs.exists(folder):
            return []
        return sorted(p for p in fs.ls(folder, detail=False)
                      if p.endswith(PART_SUFFIX) and not p.rsplit("/", 1)[-1].startswith("."))

    def read(self, part: str, columns: list[str] | None = None) -> pa.Table:
        fs, _ = self._fs()
        with fs.open(part, "rb") as f:
            return pq.read_table(f, columns=columns)

    def clear(self) -> None:
        """Remove this source's parts (its run committed everything they held)."""
        fs, folder = self._fs()
        if fs.exists(folder):
            fs.rm(folder, recursive=True)


def part_name(table: pa.Table) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in IDENTITY_COLUMNS:
        for value in table.column(name).to_pylist():
            data = value if isinstance(value, bytes) else str(value).encode()
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest() + PART_SUFFIX
