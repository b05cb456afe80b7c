"""Fuzzing every source reader: folders, tar, tar.gz and zip built from odd member names
and mutated bytes.

Property: ``iter_source`` on an existing archive never raises; it yields
SourceEntry or Rejected (with a reason) only; every member path it hands out
is a clean relative POSIX path; no spool file is left once entries are
released; nothing appears outside the spool folder; each read ends in bounded
time. Long mode: ``MEDIABIND_FUZZ_EXAMPLES=2000``. The figures count the sources
each run read, what came out, and the slowest read.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile import image_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.sources import SourceEntry, iter_source, kept_index_path
from schemas import Rejected, Settings, Stage

EXAMPLES = int(os.environ.get("MEDIABIND_FUZZ_EXAMPLES", "25"))
READ_BOUND_S = 30.0
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, EXAMPLES * 10)),
              pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")]

PHOTO = image_bytes("PNG", size=16)

# --- member names --------------------------------------------------------------------------

ODD_PARTS = ["..", ".", "", "~", "CON", "a\\..\\..\\b", "C:", "\u202eexe.txt", "e\u0301",
             "\u200b", "\x01\x1b[2J", "\n", " ", "long" * 70, "\U0001f600", "\ufeff", "*?<>|"]
SAFE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def member_names() -> st.SearchStrategy[str]:
    part = st.one_of(st.sampled_from(ODD_PARTS), st.text(SAFE_CHARS, min_size=1, max_size=12))
    suffix = st.sampled_from(["", ".txt", ".png", ".json", ".zip", ".tar", ".tgz", ".mp4"])
    lead = st.sampled_from(["", "/", "../", "./", "//"])
    return st.builds(lambda lead, parts, ext: lead + "/".join(parts) + ext, lead,
                     st.lists(part, min_size=1, max_size=4), suffix)


member_data = st.one_of(st.just(PHOTO), st.just(b""), st.just(b"plain words\n"),
                        st.binary(max_size=300), st.just(b'{"caption": "x"}'))
members = st.lists(st.tuples(member_names(), member_data), min_size=1, max_size=8)


# --- containers --------------------------------------------------------------------------------

def tar_bytes(entries: list[tuple[str, bytes]], mode: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def raw_name_tar(entries: list[tuple[str, bytes]]) -> bytes:
    """GNU tar whose names are written as raw bytes: lone surrogates become invalid UTF-8."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for name, data in entries:
            info = tarfile.TarInfo(name.replace("e", "\udce9"))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name or "_"), data)
    return out.getvalue()


BUILDERS: dict[str, tuple[str, Callable[[list[tuple[str, bytes]]], bytes]]] = {
    "tar": (".tar", lambda e: tar_bytes(e, "w")),
    "tgz": (".tgz", lambda e: tar_bytes(e, "w:gz")),
    "tar_raw_names": (".tar", raw_name_tar),
    "zip": (".zip", zip_bytes),
}


def mutate(data: bytes, op: str, where: float, blob: bytes) -> bytes:
    i = int(where * max(len(data) - 1, 0))
    return {
        "none": data,
        "truncate": data[:i],
        "flip": data[:i] + bytes(b ^ 0xA5 for b in data[i:i + len(blob)]) + data[i + len(blob):],
        "insert": data[:i] + blob + data[i:],
    }[op]


mutations = st.tuples(st.sampled_from(["none", "none", "truncate", "flip", "insert"]),
                      st.floats(0, 1), st.binary(min_size=1, max_size=32))


# --- the property --------------------------------------------------------------------------------

def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@dataclass
class Seen:
    """What one fuzz run fed the readers and got back, for the figures."""

    inputs: int = 0
    entries: int = 0
    rejected: int = 0
    slowest_s: float = 0.0

    def figures(self) -> dict[str, float]:
        return {"inputs": self.inputs, "entries": self.entries, "rejected": self.rejected,
                "slowest_s": self.slowest_s, "bound_s": READ_BOUND_S}


def check_source(source: Path, work: Path, seen: Seen | None = None) -> tuple[int, int]:
    """Read ``source`` completely; check the property; (entries, rejected)."""
    settings = Settings(home=work / "home", ffmpeg_timeout_s=10, max_nesting=2)
    spool = settings.home / "tmp"
    before = tree(work)
    started = time.monotonic()
    entries = rejected = 0
    for record in iter_source(source, settings):
        if isinstance(record, Rejected):
            assert record.reason.strip() and isinstance(record.stage, Stage), record
            rejected += 1
            continue
        assert isinstance(record, SourceEntry), record
        assert_clean_member(record.item.member)
        assert record.path.is_file() and record.item.size_bytes > 0
        record.release()
        entries += 1
    elapsed = time.monotonic() - started
    assert elapsed < READ_BOUND_S
    assert entries + rejected > 0, "every source yields something, if only one Rejected"
    assert not spool.exists() or list(spool.iterdir()) == [], "spool files left behind"
    new = {p for p in tree(work) - before if spool not in (p, *p.parents)}
    # Besides the spool, only the member index the plan keeps of a source archive.
    index = kept_index_path(str(source), settings)
    assert new <= {settings.home, spool, index.parent, index}, \
        f"written outside the spool folder: {new}"
    if seen is not None:  # counted once the property held
        seen.inputs, seen.entries, seen.rejected = (seen.inputs + 1, seen.entries + entries,
                                                    seen.rejected + rejected)
        seen.slowest_s = max(seen.slowest_s, elapsed)
    return entries, rejected


def assert_clean_member(member: str) -> None:
    parts = member.split("!/")
    for part in parts:
        assert part and not part.startswith("/") and "\x00" not in part, member
        assert ".." not in part.split("/") and "" not in part.split("/"), member
        assert "\\" not in part, member


@pytest.fixture()
def work_root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize("fmt", ["tar", "tgz", "zip"])
def test_fuzz_archives(fmt: str, work_root: Path, figures) -> None:
    suffix, build = BUILDERS[fmt]
    seen = Seen()

    @FUZZ
    @given(entries=members, mutation=mutations)
    def run(entries, mutation) -> None:
        work = Path(tempfile.mkdtemp(dir=work_root))
        source = work / f"fuzz{suffix}"
        source.write_bytes(mutate(build(entries), *mutation))
        check_source(source, work, seen)
        shutil.rmtree(work)
    run()
    figures("fuzz_sources", case=fmt, **seen.figures())


def test_fuzz_tar_with_invalid_utf8_names(work_root: Path, figures) -> None:
    suffix, build = BUILDERS["tar_raw_names"]
    seen = Seen()

    @FUZZ
    @given(entries=members)
    def run(entries) -> None:
        work = Path(tempfile.mkdtemp(dir=work_root))
        source = work / f"fuzz{suffix}"
        source.write_bytes(build([("e" + name, data) for name, data in entries]))
        started = time.monotonic()
        for record in iter_source(source, Settings(home=work / "home")):
            if isinstance(record, SourceEntry):
                record.item.member.encode("utf-8")  # payloads must be valid UTF-8
                record.release()
                seen.entries += 1
            else:
                seen.rejected += 1
        seen.inputs += 1
        seen.slowest_s = max(seen.slowest_s, time.monotonic() - started)
        shutil.rmtree(work)
    run()
    # No time bound is asserted here: none is recorded.
    figures("fuzz_sources", case="tar_raw_names", **seen.figures() | {"bound_s": None})


def _folder_name(text: str) -> str:
    # One path component a Linux file system accepts (no '/', no NUL, <= 255 bytes).
    name = text.replace("/", "_").replace("\x00", "_") or "_"
    while len(os.fsencode(name)) > 255:
        name = name[:-1]
    return name if name not in (".", "..") else "_" + name


def test_fuzz_folders(work_root: Path, figures) -> None:
    seen = Seen()

    @FUZZ
    @given(entries=members, raw=st.booleans())
    def run(entries, raw) -> None:
        work = Path(tempfile.mkdtemp(dir=work_root))
        root = work / "folder"
        for name, data in entries:
            parts = [_folder_name(p) for p in name.split("/") if p] or ["_"]
            target = root.joinpath(*parts)
            if raw:  # bytes that are not UTF-8 in the file name itself
                target = target.with_name(os.fsdecode(b"\xe9" + os.fsencode(target.name))[:200])
            try:  # names may collide (a file "a" then "a/b"): keep what fits
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue
        check_source(root, work, seen)
        shutil.rmtree(work)
    run()
    figures("fuzz_sources", case="folders", **seen.figures())
