"""The pairs manifest of ``mediabind bind``: (new-modality sample, image or video[, time]).

A CSV, Parquet or JSONL table with the columns

* ``sample``: a file of the new modality (see ``ingest.decode.extension``);
* ``image``: the paired image, or a video (also accepted as ``video``);
* ``time_s`` (optional): for a video, the moment the sample was recorded;
  without it the whole video's vector is the target;
* ``label`` (optional): a caption or class name, for the emergent
  new → text evaluation;
* ``audio`` (optional): a paired sound, for the emergent new → audio evaluation.

Relative paths are taken from the manifest's folder. Every file is checked
before anything is computed, and every problem is named at once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from schemas.extension import ExtensionError

TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl", ".json")
SHOWN_PROBLEMS = 5


@dataclass(frozen=True, slots=True)
class Pair:
    sample: Path
    image: Path
    time_s: float | None = None
    label: str | None = None
    audio: Path | None = None


def read_pairs(manifest: Path) -> list[Pair]:
    """Every row of the manifest as a Pair, after checking each named file exists."""
    manifest = Path(manifest)
    frame = _read_table(manifest)
    columns = {str(c).strip().lower(): c for c in frame.columns}
    image_column = columns.get("image", columns.get("video"))
    if "sample" not in columns or image_column is None:
        raise ExtensionError(f"{manifest}: needs columns 'sample' and 'image' (or 'video'); "
                             f"has {', '.join(map(str, frame.columns)) or 'none'}")
    base = manifest.parent
    pairs = [_pair(row, columns, image_column, base) for row in frame.to_dict("records")]
    if not pairs:
        raise ExtensionError(f"{manifest}: no pairs")
    _check_files(manifest, pairs)
    return pairs


def _read_table(manifest: Path):
    import pandas as pd

    if not manifest.is_file():
        raise ExtensionError(f"pairs manifest not found: {manifest}")
    suffix = manifest.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(manifest, dtype=str, keep_default_na=False)
        if suffix == ".parquet":
            return pd.read_parquet(manifest)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(manifest, lines=suffix == ".jsonl", dtype=False)
    except (ValueError, OSError) as exc:
        raise ExtensionError(f"{manifest}: cannot read the table: {exc}") from None
    raise ExtensionError(f"{manifest}: use a {', '.join(TABLE_SUFFIXES)} table")


def _pair(row: dict, columns: dict, image_column, base: Path) -> Pair:
    def text(name: str) -> str | None:
        value = row.get(columns[name]) if name in columns else None
        return None if _blank(value) else str(value).strip()

    time = text("time_s")
    audio = text("audio")
    return Pair(_resolve(base, text("sample") or ""), _resolve(base, str(row[image_column]).strip()),
                None if time is None else _seconds(time), text("label"),
                None if audio is None else _resolve(base, audio))


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ExtensionError(f"time_s {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ExtensionError(f"time_s {value!r} must be a finite, non-negative number of seconds")
    return seconds


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _check_files(manifest: Path, pairs: list[Pair]) -> None:
    missing = [f"row {i + 1}: {role} {path}" for i, p in enumerate(pairs)
               for role, path in (("sample", p.sample), ("image", p.image), ("audio", p.audio))
               if path is not None and not path.is_file()]
    if missing:
        shown = "; ".join(missing[:SHOWN_PROBLEMS])
        more = f" (and {len(missing) - SHOWN_PROBLEMS} more)" if len(missing) > SHOWN_PROBLEMS else ""
        raise ExtensionError(f"{manifest}: {len(missing)} file(s) not found: {shown}{more}")


def split(pairs: list[Pair], holdout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): each pair's side is fixed by a hash of its sample's
    file name, so adding pairs never moves an existing pair between the two, and the
    split is the same wherever the files are mounted."""
    if not 0 < holdout < 1:
        raise ExtensionError(f"holdout fraction {holdout} must be between 0 and 1")
    train, held = [], []
    for row, pair in enumerate(pairs):
        digest = hashlib.sha256(f"{seed}:{pair.sample.name}".encode()).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < holdout else train).append(row)
    if not train or not held:
        raise ExtensionError(f"{len(pairs)} pairs give an empty train or held-out split at "
                             f"holdout {holdout}: add pairs")
    return train, held
