"""A damaged checkpoint download cache: garbage ``.partial``, one too long, a wrong-size file.

A real HTTP server on 127.0.0.1 serves a position-dependent payload; each case
ends with the exact bytes in place (after at most one clear refusal). Each
case records whether its bytes came out right and how many refusals it took.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from embed_workers.model import CheckpointError, DownloadError, get_preset, resolve_checkpoint
from embed_workers.model.download import download, partial_path
from schemas import Settings

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(600_000))


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD, honouring ``Range: bytes=N-`` (206, or 416 past the end)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        header = self.headers.get("Range")
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
            self.end_headers()
            return
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
    httpd.shutdown()
    httpd.server_close()


def _record(figures, case: str, right: bool, refused: pytest.ExceptionInfo | None) -> None:
    """One case: whether the right bytes ended in place, and the refusal it saw first."""
    figures("checkpoint_cache_damaged", case=case, bytes_right=right,
            refused_with=refused.typename if refused else None)


@pytest.mark.parametrize("garbage", [
    pytest.param(lambda: b"\xde\xad" * 100_000, id="garbage-partial"),
    pytest.param(lambda: PAYLOAD[:250_000] + b"junk" * 100, id="torn-tail-partial"),
    pytest.param(lambda: PAYLOAD + b"x" * 1000, id="partial-longer-by-a-little"),
])
def test_a_damaged_partial_is_detected_and_the_download_starts_over(url, tmp_path, garbage,
                                                                    figures, request) -> None:
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(garbage())
    download(url, dest, expected_bytes=len(PAYLOAD), progress=False)
    _record(figures, request.node.callspec.id, dest.read_bytes() == PAYLOAD, refused=None)
    assert dest.read_bytes() == PAYLOAD and not partial_path(dest).exists()


def test_a_partial_far_longer_than_the_file_is_discarded_then_the_retry_succeeds(
        url, tmp_path, figures) -> None:
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(PAYLOAD * 2)
    with pytest.raises(DownloadError, match="discarded") as refused:
        download(url, dest, expected_bytes=len(PAYLOAD), progress=False)
    assert not dest.exists() and not partial_path(dest).exists()
    download(url, dest, expected_bytes=len(PAYLOAD), progress=False)
    _record(figures, "partial-far-longer", dest.read_bytes() == PAYLOAD, refused)
    assert dest.read_bytes() == PAYLOAD


def _preset_and_settings(url: str, tmp_path: Path, accept: bool):
    preset = dataclasses.replace(get_preset("imagebind_huge"), checkpoint_url=url,
                                 checkpoint_bytes=len(PAYLOAD))
    settings = Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", checkpoint=None,
                        accept_license=accept)
    return preset, settings, settings.checkpoint_dir / preset.checkpoint_filename


@pytest.mark.parametrize("cached", [
    pytest.param(PAYLOAD[:100_000], id="final-file-too-short"),
    pytest.param(PAYLOAD + b"tail", id="final-file-too-long"),
])
def test_a_cached_checkpoint_of_the_wrong_size_is_refused_or_fetched_again(
        url, tmp_path, cached, figures, request) -> None:
    preset, offline, target = _preset_and_settings(url, tmp_path, accept=False)
    target.parent.mkdir(parents=True)
    target.write_bytes(cached)
    with pytest.raises(CheckpointError, match="damaged") as refused:
        resolve_checkpoint(preset, offline)
    assert target.read_bytes() == cached  # refusing never deletes the user's file
    preset, online, _ = _preset_and_settings(url, tmp_path, accept=True)
    assert resolve_checkpoint(preset, online) == target
    _record(figures, request.node.callspec.id, target.read_bytes() == PAYLOAD, refused)
    assert target.read_bytes() == PAYLOAD
