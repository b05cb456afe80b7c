"""Shared pieces of the pipeline end-to-end tests: a generated archive, settings, checks.

The archive holds two short videos with sound, two images, a wav, a text file,
a copy of one image at a second path (a duplicate) and a corrupt "video".
Expected segment counts come from running the decoders directly on the
extracted files, independently of any executor.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from media import MediaLibrary, ffmpeg

from embed_workers.executors import preset_model_id
from embed_workers.model.tokenizer import count_tokens
from ingest.decode import decode_item
from schemas import (
    FILE_LEVEL_INDEX,
    EmbeddingRecord,
    Kind,
    MediaItem,
    Rejected,
    Settings,
)
from search.store import VectorStore, open_store

PRESET = "imagebind_tiny"
CORRUPT = "clips/broken.mp4"
DUPLICATE = "copies/red.png"

GOOD_FILES: dict[str, Kind] = {
    "clips/tone.mp4": Kind.VIDEO,
    "clips/bars.mkv": Kind.VIDEO,
    "images/red.png": Kind.IMAGE,
    "images/noise.jpg": Kind.IMAGE,
    "sounds/beep.wav": Kind.AUDIO,
    "notes/readme.txt": Kind.TEXT,
}


# Archive member → tests/media.py recipe (generated media).
FROM_LIBRARY = {
    "clips/tone.mp4": "colour_mp4",
    "clips/bars.mkv": "colour_mkv",
    "sounds/beep.wav": "tone_wav",
    CORRUPT: "random_mp4",
}


def make_media(folder: Path) -> Path:
    """Write the archive's files into ``folder`` (small: the whole set is < 1 MB)."""
    library = MediaLibrary(folder.parent / "library")
    for sub in ("clips", "images", "sounds", "notes", "copies"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for member, recipe in FROM_LIBRARY.items():
        shutil.copyfile(library.get(recipe), folder / member)
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=40x30", "-frames:v", "1",
           str(folder / "images/red.png"))
    ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=50x40", "-frames:v", "1",
           str(folder / "images/noise.jpg"))
    (folder / "notes/readme.txt").write_text(
        "A fire crackles beside the lake. " * 40 + "Birds sing at dawn over the sea.")
    (folder / DUPLICATE).write_bytes((folder / "images/red.png").read_bytes())
    return folder


def make_archive(tmp: Path) -> Path:
    folder = make_media(tmp / "media")
    archive = tmp / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(path, path.relative_to(folder).as_posix())
    return archive


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_segments(folder: Path, settings: Settings) -> Counter[str]:
    """Segments per modality of the good files, by the decoders alone."""
    counts: Counter[str] = Counter()
    for member, kind in GOOD_FILES.items():
        path = folder / member
        item = MediaItem(sha256(path), str(folder), member, path.stat().st_size, kind)
        for out in decode_item(item, path, settings.policy, settings, count_tokens):
            assert not isinstance(out, Rejected), out
            counts[out.modality.value] += 1
    return counts


def settings_for(home: Path, **overrides: Any) -> Settings:
    base = {"home": home, "preset": PRESET, "device": "cpu", "dtype": "float32",
            "decode_workers": 2, "store": "edge"}
    return Settings(**(base | overrides))


def open_ready_store(settings: Settings) -> VectorStore:
    store = open_store(settings)
    store.ensure_collection(preset_model_id(settings.preset), settings.policy)
    return store


def all_points(store: VectorStore) -> dict[str, dict[str, Any]]:
    return {p.id: p.payload for p in store.scroll(None, limit=1_000_000)}


def completing(payloads) -> list[dict[str, Any]]:
    """The points that mark items complete: file-level points, and the one point of an
    item of one segment (``whole``)."""
    return [p for p in payloads if p["segment_index"] == FILE_LEVEL_INDEX or p.get("whole")]


def whole_items_are_the_single_segment_ones(payloads) -> bool:
    """An item is one point marked whole exactly when it has one segment in all."""
    payloads = list(payloads)
    per_item = Counter(p["item_id"] for p in payloads if p["segment_index"] != FILE_LEVEL_INDEX)
    whole = [p["item_id"] for p in payloads if p.get("whole")]
    return len(whole) == len(set(whole)) and set(whole) == {
        i for i, n in per_item.items() if n == 1}


def vectors(store: VectorStore, ids: Sequence[str]) -> dict[str, np.ndarray]:
    return {p.id: np.asarray(p.vector) for p in store.retrieve(list(ids), with_vectors=True)}


class ListSink:
    """A sink that keeps what it is given in lists (the collector's own tests)."""

    def __init__(self) -> None:
        self.records: list = []
        self.locations: list = []

    def write(self, records) -> None:
        self.records.extend(records)

    def completed_items(self, item_ids) -> set[str]:
        return set()

    def add_locations(self, item_id, source_uris) -> None:
        self.locations.append((item_id, list(source_uris)))


def list_context(home: Path, executor: str = "local") -> tuple[Any, ListSink]:
    """A run's context over a ``ListSink`` (tiny preset, no ledger), and that sink."""
    from embed_workers.executors import make_context

    sink = ListSink()
    ctx = make_context(str(home), sink, settings=Settings(home=home, preset=PRESET),
                       executor=executor, encoder=None, run_id="r1", manifest=None,
                       progress=None)
    return ctx, sink


class FailingSink:
    """The real store, cut off after ``allowed`` write calls (a crash at that moment)."""

    def __init__(self, store: VectorStore, allowed: int) -> None:
        self.store, self.allowed, self.writes = store, allowed, 0

    def write(self, records: Sequence[EmbeddingRecord]) -> None:
        if self.writes >= self.allowed:
            raise ConnectionError("injected: the store went away")
        self.writes += 1
        self.store.write(records)

    def completed_items(self, item_ids):
        return self.store.completed_items(item_ids)

    def add_locations(self, item_id, uris):
        self.store.add_locations(item_id, uris)

    def forget_locations(self, item_id, uris):
        return self.store.forget_locations(item_id, uris)

    def ledger(self):
        return self.store.ledger()

    def close(self, **options) -> None:
        self.store.close(**options)

    @contextmanager
    def lend(self):
        """Lent to a Ray run's committer: the store is cut off there, after as many writes."""
        with self.store.lend() as opener:
            yield FailingOpener(opener, self.allowed)


@dataclass(frozen=True)
class FailingOpener:
    opener: Any
    allowed: int

    def __call__(self) -> FailingSink:
        return FailingSink(self.opener(), self.allowed)
