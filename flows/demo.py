"""The main job (``python -m flows.demo``, or ``scripts/demo.sh``).

1. Build a small sample archive (``flows.sample``): videos with soundtracks,
   audio clips, photos, captions; a .tar.gz under ``HOME/sample/``.
2. Ingest it through the Prefect flow ``ingest_archive`` on the embedded
   defaults (Qdrant on disk under ``HOME``, local executor).
3. Run cross-modal searches (text → files, audio → the video with that sound,
   image + audio mixed) and print them as tables.

The model is ImageBind-huge when its checkpoint is on this machine (or its
licence is accepted, so it may be downloaded); otherwise the tiny
random-weight test model, announced by a banner before anything else. Exits
non-zero when any stage fails.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Settings, get_settings

REAL_PRESET = "imagebind_huge"
TEST_PRESET = "imagebind_tiny"
TINY_BANNER = (
    "no ImageBind checkpoint: running with the tiny random-weight test model — the pipeline, "
    "store and search are real, but rankings are not semantic; see README 'Real results'"
)


class DemoError(RuntimeError):
    """A stage of the demo did not do what it must."""


def choose_preset(settings: Settings) -> str:
    """imagebind_huge when its weights are here or may be downloaded, else the tiny model."""
    if settings.checkpoint is not None:
        if not Path(settings.checkpoint).is_file():
            raise DemoError(f"MEDIABIND_CHECKPOINT={settings.checkpoint} is not a file")
        return REAL_PRESET
    from embed_workers.model.presets import get_preset

    cached = settings.checkpoint_dir / get_preset(REAL_PRESET).checkpoint_filename
    return REAL_PRESET if cached.is_file() or settings.accept_license else TEST_PRESET


def demo_alias(preset: str) -> str:
    """One alias per model, so the demo never mixes its collections with the user's."""
    return f"mediabind_demo_{preset}"


@dataclass(frozen=True, slots=True)
class Query:
    """One demo search: what it shows, and the keyword arguments of MediaSearch.search."""

    title: str
    inputs: dict[str, Any]


def demo_queries(queries_dir: Path) -> list[Query]:
    photos = sorted((queries_dir / "photos").iterdir())
    photo = next((p for p in photos if p.stem == "cat"), photos[0])
    return [
        Query("text 'an astronaut in a space suit' → files",
              {"text": "an astronaut in a space suit"}),
        Query("text 'the sound of rain' → audio moments", {"text": "the sound of rain",
                                                           "modalities": ["audio"]}),
        Query("audio beep_query.wav → videos with that sound",
              {"audio": queries_dir / "beep_query.wav", "kinds": ["video"]}),
        Query("audio rain_query.wav → videos with that sound",
              {"audio": queries_dir / "rain_query.wav", "kinds": ["video"]}),
        Query(f"image {photo.name} + audio rain_query.wav (0.5 / 0.5) → files",
              {"image": photo, "audio": queries_dir / "rain_query.wav",
               "weights": {"image": 0.5, "audio": 0.5}}),
    ]


def build_stage(settings: Settings, rebuild: bool) -> Path:
    from flows.sample import build_sample

    archive = build_sample(settings, force=rebuild)
    print(f"sample archive: {archive}")
    return archive


def ingest_stage(archive: Path, preset: str) -> dict[str, Any]:
    from flows.ingest import ingest_archive

    summary = ingest_archive(str(archive), collection=demo_alias(preset), preset=preset)
    print(f"ingested through the flow: {summary['items_completed']} new items, "
          f"{summary['items_unchanged'] + summary['items_skipped']} already stored, "
          f"{summary['points_written']} points "
          f"written into {summary['collection']} (alias {summary['alias']}); "
          f"report {summary['report']}")
    if summary["items_rejected"]:
        raise DemoError(f"{summary['items_rejected']} sample files were rejected; see "
                        f"{summary['report']}")
    return summary


def search_stage(settings: Settings, preset: str, archive: Path,
                 queries: Sequence[Query]) -> None:
    from search.client import MediaSearch

    tuned = settings.model_copy(update={"preset": preset})
    print(f"files below are members of {archive}")
    with MediaSearch(tuned, collection=demo_alias(preset)) as searcher:
        for query in queries:
            results = searcher.search(**query.inputs, limit=5)
            if not len(results):
                raise DemoError(f"no results for: {query.title}")
            print(f"\n== {query.title}\n{results_table(results, archive)}")


def results_table(results: Any, archive: Path) -> str:
    """The hits with member names (a long archive path would push them out of view)."""
    from search.results import render_table

    prefix = f"{archive}!/"
    rows = [(str(h.rank), f"{h.score:.4f}", h.source_uri.removeprefix(prefix), h.kind,
             h.moment_label, h.snippet) for h in results]
    return render_table(rows, ("rank", "score", "file", "kind", "moment", "text"))


def timed(name: str, step: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        result = step()
    except Exception as exc:
        traceback.print_exc()
        raise DemoError(f"stage '{name}' failed: {exc}") from exc
    print(f"[{name}: {time.perf_counter() - started:.1f} s]")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mediabind end-to-end demo on a sample archive")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the sample archive")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        preset = choose_preset(settings)
        if preset == TEST_PRESET:
            print(TINY_BANNER, flush=True)  # first thing printed: results are not semantic
        print(f"model preset: {preset}; home: {settings.home}")
        archive = timed("sample", lambda: build_stage(settings, args.rebuild))
        timed("ingest", lambda: ingest_stage(archive, preset))
        queries = demo_queries(archive.parent / "queries")
        timed("search", lambda: search_stage(settings, preset, archive, queries))
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    if preset == TEST_PRESET:
        print(f"\n{TINY_BANNER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
