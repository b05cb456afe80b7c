"""Build the small sample archive the demo ingests (``python -m flows.sample``).

Everything is generated on the spot: short videos with soundtracks and audio
clips from ffmpeg's lavfi sources, a few real photos from scikit-image's
bundled data when it is installed (otherwise generated test cards, and the
log says so), and a captions file. Members are written bit-exact, so a
rebuilt archive holds the same bytes and a re-ingest finds nothing new.

Queries (what the demo searches with: audio clips and copies of the photos)
are written beside the archive, in ``queries/``, not inside it: an audio
query should find the video that shares its sound.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import logging
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas import Settings, get_settings

log = logging.getLogger(__name__)

ARCHIVE_NAME = "mediabind-sample.tar.gz"
SIZE = "160x120"  # small frames: decode and the tiny model stay fast on 2 cores
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            "-map_metadata", "-1"]

# Photos from skimage.data: file name in the archive -> loader name, and a caption.
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.jpg": ("astronaut", "an astronaut in a space suit in front of the flag"),
    "coffee.jpg": ("coffee", "a cup of coffee on a saucer"),
    "cat.jpg": ("chelsea", "a ginger cat looking at the camera"),
    "rocket.jpg": ("rocket", "a rocket standing on the launch pad"),
}

# Generated stand-ins when scikit-image is missing: lavfi source per file name.
GENERATED_IMAGES: dict[str, str] = {
    "testcard.png": f"testsrc2=size={SIZE}:rate=1",
    "mandelbrot.png": f"mandelbrot=size={SIZE}:rate=1",
    "cells.png": f"cellauto=size={SIZE}:rate=1:rule=110:random_seed=5",
}


@dataclass(frozen=True, slots=True)
class Clip:
    """One generated video or audio file: lavfi sources and a caption."""

    video: str | None
    audio: str
    seconds: float
    caption: str


# Videos and audio clips of the archive, keyed by member path.
CLIPS: dict[str, Clip] = {
    "video/beep.mp4": Clip(f"testsrc2=size={SIZE}:rate=10", "sine=frequency=880:sample_rate=16000",
                           4.0, "a test card with a high beeping tone"),
    "video/rain.mp4": Clip(f"cellauto=size={SIZE}:rate=10:rule=30:random_seed=5",
                           "anoisesrc=color=pink:sample_rate=16000:seed=7:amplitude=0.5",
                           4.0, "flickering pattern with the sound of rain"),
    "audio/low_hum.wav": Clip(None, "sine=frequency=110:sample_rate=16000", 3.0,
                              "a low electrical hum"),
    "audio/wind.flac": Clip(None, "anoisesrc=color=brown:sample_rate=16000:seed=3:amplitude=0.4",
                            3.0, "wind blowing"),
}

# Query clips (outside the archive): each shares its sound with one archive video.
QUERY_CLIPS: dict[str, Clip] = {
    "beep_query.wav": Clip(None, "sine=frequency=880:sample_rate=16000", 2.0, "a beep"),
    "rain_query.wav": Clip(None, "anoisesrc=color=pink:sample_rate=16000:seed=11:amplitude=0.5",
                           2.0, "rain"),
}


def sample_dir(settings: Settings | None = None) -> Path:
    """Where the sample archive and the query clips live: HOME/sample."""
    return (settings or get_settings()).home / "sample"


def build_sample(settings: Settings | None = None, *, force: bool = False) -> Path:
    """Build (or reuse) HOME/sample/mediabind-sample.tar.gz and the query clips."""
    out = sample_dir(settings)
    archive = out / ARCHIVE_NAME
    write_queries(out / "queries", force=force)
    if archive.exists() and not force:
        log.info("reusing sample archive %s", archive)
        return archive
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mediabind-sample-") as tmp:
        members = write_members(Path(tmp))
        pack_tar_gz(Path(tmp), members, archive)
    log.info("built sample archive %s (%d files)", archive, len(members))
    return archive


def write_members(root: Path) -> list[str]:
    """Write every archive member under ``root``; returns their relative paths."""
    members: list[str] = []
    for name, clip in CLIPS.items():
        write_clip(clip, root / name)
        members.append(name)
    members += write_images(root / "images")
    captions = root / "text" / "captions.txt"
    captions.parent.mkdir(parents=True, exist_ok=True)
    captions.write_text(captions_text(), encoding="utf-8")
    members.append("text/captions.txt")
    return members


def captions_text() -> str:
    """One caption per line for every clip and photo of the archive."""
    lines = [clip.caption for clip in CLIPS.values()]
    lines += [caption for _, caption in PHOTOS.values()]
    return "\n".join(lines) + "\n"


def write_queries(folder: Path, *, force: bool = False) -> dict[str, Path]:
    """The audio clips and the photo the demo queries with; kept if already there."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in QUERY_CLIPS}
    for name, clip in QUERY_CLIPS.items():
        if force or not paths[name].exists():
            write_clip(clip, paths[name])
    photos = folder / "photos"
    if force or not photos.is_dir():
        write_images(photos)
    paths |= {f"photos/{p.name}": p for p in sorted(photos.iterdir())}
    return paths


def write_clip(clip: Clip, path: Path) -> None:
    """Render one clip with ffmpeg (video + soundtrack, or audio only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = ["-f", "lavfi", "-i", clip.audio]
    codecs = ["-c:a", "aac"] if clip.video else []
    if clip.video:
        inputs = ["-f", "lavfi", "-i", clip.video, *inputs]
        codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *codecs]
    run_ffmpeg([*inputs, "-t", f"{clip.seconds:g}", "-ac", "1", *codecs, *BITEXACT, str(path)])


def write_images(folder: Path) -> list[str]:
    """Real photos when scikit-image is installed, generated test cards otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("skimage") is None:
        log.warning("scikit-image is not installed: the sample uses generated images, not photos")
        return [f"images/{name}" for name in _write_generated(folder)]
    return [f"images/{name}" for name in _write_photos(folder)]


def _write_photos(folder: Path) -> list[str]:
    from PIL import Image
    from skimage import data

    for name, (loader, _) in PHOTOS.items():
        image = Image.fromarray(getattr(data, loader)()).convert("RGB")
        image.thumbnail((320, 320))
        image.save(folder / name, quality=90)
    return list(PHOTOS)


def _write_generated(folder: Path) -> list[str]:
    for name, source in GENERATED_IMAGES.items():
        run_ffmpeg(["-f", "lavfi", "-i", source, "-frames:v", "1", *BITEXACT,
                    str(folder / name)])
    return list(GENERATED_IMAGES)


def run_ffmpeg(args: Sequence[str], timeout_s: float = 60.0) -> None:
    """ffmpeg, quiet; its own error message is raised when it fails."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise RuntimeError("ffmpeg is not installed (see scripts/setup.sh)") from None
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {args[-1]}: {done.stderr.strip()}")


def pack_tar_gz(root: Path, members: Sequence[str], archive: Path) -> None:
    """A reproducible .tar.gz (fixed mtimes and owners), written atomically."""
    partial = archive.with_name(archive.name + ".partial")
    # gzip's header carries a timestamp: pin it, or every build differs.
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name in sorted(members):
            tar.add(root / name, arcname=name, filter=_normalised)
    partial.replace(archive)


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build mediabind's sample archive.")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_sample(force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
