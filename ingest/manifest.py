"""Sidecar manifests: per-file metadata for a source, from CSV, Parquet or JSON lines.

Format
------
One row per file, chosen by the manifest's extension:

- ``.csv`` (header row; types inferred: numbers stay numbers),
- ``.parquet``,
- ``.jsonl`` / ``.ndjson`` (one JSON object per line; blank lines skipped).

Columns:

- ``path`` or ``member`` (exactly one of them, required): the file's path
  relative to the source root, POSIX style, as it appears in
  ``MediaItem.member`` (``a/b.jpg``; inside a nested archive
  ``a/inner.zip!/b.jpg``). A leading ``./`` is ignored. Each path at most once.
- ``kind`` (optional): one of ``image video audio text depth thermal imu``;
  overrides detection for that file. Empty means "detect".
- any other column: copied into ``MediaItem.meta`` (and so into the Qdrant
  payload's ``meta``). Empty cells (null) are left out. Dates and times become
  ISO-8601 strings, so every value can be stored as JSON.

Any problem (unknown extension, unreadable file, missing/duplicate path,
unknown kind) raises ``ManifestError`` naming the file and row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from schemas import Kind

PATH_COLUMNS = ("path", "member")


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """What the manifest says about one file."""

    path: str
    kind: Kind | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_manifest(path: str | Path) -> dict[str, ManifestRow]:
    """Rows of a manifest keyed by their normalised member path (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(sorted(READERS))
        raise ManifestError(f"{path}: unknown manifest format {path.suffix!r}; expected {known}")
    rows: dict[str, ManifestRow] = {}
    for number, record in enumerate(reader(path), start=1):
        row = _to_row(record, path, number)
        if row.path in rows:
            raise ManifestError(f"{path}: row {number}: path {row.path!r} appears twice")
        rows[row.path] = row
    return rows


def normalise_member(name: str) -> str:
    """The key form of a member path: POSIX separators, no leading ``./``."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _read_table(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if path.suffix.lower() == ".csv":
            # An empty cell means "no value", also in text columns.
            options = pyarrow.csv.ConvertOptions(strings_can_be_null=True)
            table = pyarrow.csv.read_csv(path, convert_options=options)
        else:
            table = pyarrow.parquet.read_table(path)
    except Exception as exc:  # pyarrow raises several types; all mean "unreadable"
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from exc
    yield from table.to_pylist()


def _read_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}: line {number}: invalid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise ManifestError(f"{path}: line {number}: expected a JSON object")
            yield record


READERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    ".csv": _read_table,
    ".parquet": _read_table,
    ".jsonl": _read_json_lines,
    ".ndjson": _read_json_lines,
}


def _to_row(record: dict[str, Any], source: Path, number: int) -> ManifestRow:
    where = f"{source}: row {number}"
    present = [c for c in PATH_COLUMNS if c in record]
    if len(present) != 1:
        raise ManifestError(f"{where}: needs exactly one of the columns 'path' or 'member', "
                            f"found {present or 'neither'}")
    member = record[present[0]]
    if not isinstance(member, str) or not normalise_member(member):
        raise ManifestError(f"{where}: {present[0]!r} must be a non-empty string")
    rest = {k: v for k, v in record.items() if k not in (present[0], "kind")}
    meta = {k: _jsonable(v) for k, v in rest.items() if not _is_null(v)}
    return ManifestRow(normalise_member(member), _kind(record.get("kind"), where), meta)


def _kind(value: Any, where: str) -> Kind | None:
    if _is_null(value) or value == "":
        return None
    try:
        return Kind(str(value).strip().lower())
    except ValueError:
        names = " ".join(k.value for k in Kind)
        raise ManifestError(f"{where}: unknown kind {value!r}; expected one of: {names}") from None


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _jsonable(value: Any) -> Any:
    """A JSON-storable copy of a cell: dates become ISO strings, containers recurse."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if _is_null(value) or isinstance(value, bool | int | float | str):
        return None if _is_null(value) else value
    return str(value)
