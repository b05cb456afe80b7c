"""A store for the web tests: the search archive (tests/search_helpers.py), sensor
recordings, and a .tar.gz whose members are served by extraction, ingested once per
session through the one run entry (``flows.run.start_run``), so run reports exist.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from search_helpers import ffmpeg, make_media, settings_for

from schemas import Settings

_CACHE: dict[str, WebStore] = {}


@dataclass(frozen=True)
class WebStore:
    media: Path  # a folder source
    archive: Path  # a .tar.gz source
    queries: Path
    settings: Settings
    summaries: dict[str, str]  # run id -> what the CLI printed for it


def make_sensors(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray((500 + 40 * xx + 10 * yy).astype(np.uint16)).save(folder / "room.depth.png")
    Image.fromarray((3000 + 5 * xx * yy).astype(np.uint16)).save(folder / "hand.thermal.png")
    t = np.arange(0, 6, 0.01)
    pd.DataFrame({"t": t, "ax": np.sin(t), "ay": np.cos(t), "az": 9.8 + 0 * t,
                  "gx": t, "gy": -t, "gz": np.sin(3 * t)}).to_csv(folder / "walk.imu.csv",
                                                                   index=False)


def make_archive(path: Path, work: Path) -> None:
    """A .tar.gz of a sound and a picture (compressed: served by extraction)."""
    work.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=1200:duration=3:sample_rate=16000",
           str(work / "chime.wav"))
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=40x30", "-frames:v", "1",
           str(work / "blue.png"))
    with tarfile.open(path, "w:gz") as tar:
        for name in ("chime.wav", "blue.png"):
            tar.add(work / name, arcname=f"inside/{name}")


def web_store(root: Path) -> WebStore:
    """Generate and ingest once per session (root: a session tmp dir)."""
    if "store" not in _CACHE:
        from flows.run import start_run

        media, queries = root / "media", root / "queries"
        make_media(media, queries)
        make_sensors(media / "sensors")
        archive = root / "drop.tar.gz"
        make_archive(archive, root / "archive-src")
        settings = settings_for(root / "home")
        summaries = {}
        for source in (media, archive):
            outcome = start_run(str(source), settings, executor="local")
            assert not outcome.report.rejected, outcome.report.rejected
            summaries[outcome.report.run_id] = outcome.report.summary()
        _CACHE["store"] = WebStore(media, archive, queries, settings, summaries)
    return _CACHE["store"]
