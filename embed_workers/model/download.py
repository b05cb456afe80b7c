"""Resumable, size-checked, atomic HTTP download of a checkpoint file (stdlib only).

Bytes go to ``<dest>.partial``; an interrupted download resumes from there
with an HTTP Range request that starts a little before the partial's end:
the overlap must match what the partial holds, else the partial is garbage
(a torn write, another file) and the download starts over from byte 0. ``dest`` appears only once the file is complete
and its size checked (``os.replace``), so a crash never leaves a truncated
checkpoint where the loader looks.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 3.0
TIMEOUT_S = 60.0
OVERLAP_BYTES = 1 << 16  # re-fetched on resume to check the partial's tail


class DownloadError(RuntimeError):
    """The download failed or gave the wrong number of bytes; ``dest`` was not written."""


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _open(url: str, offset: int):  # -> http.client.HTTPResponse
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _total_size(response, offset: int) -> int | None:
    """The full file size from Content-Range (resumed) or Content-Length (fresh)."""
    content_range = response.headers.get("Content-Range", "")
    match = re.search(r"/(\d+)\s*$", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return None if length is None else offset + int(length)


class _Progress:
    """Prints percent, MB and MB/s to stderr every few seconds."""

    def __init__(self, name: str, done: int, total: int | None, enabled: bool) -> None:
        self.name, self.done, self.total, self.enabled = name, done, total, enabled
        self.started = self.last = time.monotonic()
        self.start_bytes = done

    def advance(self, nbytes: int, final: bool = False) -> None:
        self.done += nbytes
        now = time.monotonic()
        if not self.enabled or (now - self.last < PROGRESS_EVERY_S and not final):
            return
        self.last = now
        rate = (self.done - self.start_bytes) / max(now - self.started, 1e-6) / 1e6
        share = f"{100 * self.done / self.total:5.1f}% " if self.total else ""
        of_total = f"/{self.total / 1e6:.0f}" if self.total else ""
        print(f"{self.name}: {share}{self.done / 1e6:.0f}{of_total} MB, {rate:.1f} MB/s",
              file=sys.stderr, flush=True)


def _stream(response, sink: BinaryIO, progress: _Progress) -> None:
    while chunk := response.read(CHUNK_BYTES):
        sink.write(chunk)
        progress.advance(len(chunk))
    progress.advance(0, final=True)


def _check_size(partial: Path, expected: int | None, url: str) -> None:
    size = partial.stat().st_size
    if expected is None or size == expected:
        return
    if size > expected:  # cannot be resumed into the right file: start over next time
        partial.unlink()
        raise DownloadError(f"{url}: got {size} bytes, expected {expected}; discarded the file")
    raise DownloadError(f"{url}: got {size} of {expected} bytes; run again to resume "
                        f"from {partial}")


def download(url: str, dest: Path | str, expected_bytes: int | None = None,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.partial`` if present; returns ``dest``.

    The size is checked against ``expected_bytes`` or, failing that, the size
    the server announced. Raises ``DownloadError`` (nothing renamed) on a
    network error or a size mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(dest)
    offset = partial.stat().st_size if partial.exists() else 0
    try:
        announced = _fetch_into(url, partial, offset, progress, dest.name)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise DownloadError(f"could not download {url} to {dest}: {error}") from error
    _check_size(partial, expected_bytes if expected_bytes is not None else announced, url)
    os.replace(partial, dest)
    return dest


def _fetch_into(url: str, partial: Path, offset: int, progress: bool, name: str) -> int | None:
    """Stream into ``partial`` (appending when the server honours Range); the announced size."""
    overlap = min(offset, OVERLAP_BYTES)
    try:
        response = _open(url, offset - overlap)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after the range start: the partial is too long
            return _total_size(error, 0) or offset
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and not _tail_matches(partial, response.read(overlap)):
            resumed = False
        if offset > 0 and not resumed and response.status == 206:
            response.close()  # a partial that is not a prefix of the file: start over
            return _fetch_into(url, partial, 0, progress, name)
        start = offset if resumed else 0  # a 200 to a Range request restarts from byte 0
        total = _total_size(response, offset - overlap if resumed else 0)
        with open(partial, "ab" if resumed else "wb") as sink:
            _stream(response, sink, _Progress(name, start, total, progress))
    return total


def _tail_matches(partial: Path, expected: bytes) -> bool:
    """Whether the partial ends with ``expected`` (the server's bytes just before its end)."""
    with open(partial, "rb") as fh:
        fh.seek(-len(expected), os.SEEK_END)
        return fh.read() == expected
