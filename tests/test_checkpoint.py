"""Checkpoint resolution, licence gate, resumable download (real local HTTP server), strict loading."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from embed_workers.model import (
    CheckpointError,
    DownloadError,
    ImageBindModel,
    LicenseNotAccepted,
    build_model,
    download,
    get_preset,
    load_weights,
    resolve_checkpoint,
)
from embed_workers.model.download import OVERLAP_BYTES, partial_path
from schemas import Settings

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB with a position-dependent pattern


class _Server:
    """What the handler serves and what it saw."""

    def __init__(self) -> None:
        self.honour_range = True
        self.cut_after: int | None = None  # announce the full length, send only this many bytes
        self.ranges: list[str | None] = []


class _Handler(BaseHTTPRequestHandler):
    state: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        header = self.headers.get("Range")
        self.state.ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if header and self.state.honour_range:
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            start = 0
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: self.state.cut_after] if self.state.cut_after else body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, _Server]]:
    state = _Server()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/imagebind_huge.pth", state
    httpd.shutdown()
    httpd.server_close()


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = {"home": tmp_path / "home", "cache_dir": tmp_path / "cache", "checkpoint": None,
              "accept_license": False}
    values.update(overrides)
    return Settings(**values)


# --- download -----------------------------------------------------------------------------

def test_download_fresh_file_with_progress(server, tmp_path, capsys) -> None:
    url, _ = server
    dest = download(url, tmp_path / "sub" / "w.pth", expected_bytes=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert not partial_path(dest).exists()
    err = capsys.readouterr().err
    assert "%" in err and "MB/s" in err


def test_download_resumes_a_truncated_partial_with_range(server, tmp_path) -> None:
    url, state = server
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(PAYLOAD[:300_000])
    download(url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.ranges == [f"bytes={300_000 - OVERLAP_BYTES}-"]  # re-reads an overlap


def test_interrupted_download_keeps_partial_then_resumes(server, tmp_path) -> None:
    url, state = server
    dest = tmp_path / "w.pth"
    state.cut_after = 400_000
    with pytest.raises(DownloadError):
        download(url, dest, progress=False)
    assert not dest.exists()
    assert 0 < partial_path(dest).stat().st_size < len(PAYLOAD)
    state.cut_after = None
    download(url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert state.ranges[-1] is not None


def test_server_ignoring_range_restarts_from_zero(server, tmp_path) -> None:
    url, state = server
    state.honour_range = False
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(b"garbage" * 100)
    download(url, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_partial_is_finished_on_416(server, tmp_path) -> None:
    url, _ = server
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(PAYLOAD)
    download(url, dest, expected_bytes=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("expected", [len(PAYLOAD) + 10, len(PAYLOAD) - 10])
def test_size_mismatch_is_an_error_and_nothing_is_renamed(server, tmp_path, expected) -> None:
    url, _ = server
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match="expected|of"):
        download(url, dest, expected_bytes=expected, progress=False)
    assert not dest.exists()


# --- resolution and the licence gate -------------------------------------------------------

def test_resolution_order(tmp_path) -> None:
    preset = get_preset("imagebind_huge")
    explicit, env, cached = (tmp_path / n for n in ("explicit.pth", "env.pth", "cache"))
    explicit.write_bytes(b"x")
    env.write_bytes(b"x")
    cached.mkdir()
    (cached / preset.checkpoint_filename).write_bytes(b"x")
    settings = _settings(tmp_path, checkpoint=env)
    assert resolve_checkpoint(preset, settings, explicit) == explicit
    assert resolve_checkpoint(preset, settings) == env
    assert resolve_checkpoint(preset, _settings(tmp_path)) == cached / preset.checkpoint_filename
    with pytest.raises(CheckpointError, match="MEDIABIND_CHECKPOINT.*missing.pth"):
        resolve_checkpoint(preset, _settings(tmp_path, checkpoint=tmp_path / "missing.pth"))


def test_licence_refusal_explains_what_to_do(tmp_path) -> None:
    preset = get_preset("imagebind_huge")
    with pytest.raises(LicenseNotAccepted) as caught:
        resolve_checkpoint(preset, _settings(tmp_path))
    message = str(caught.value)
    target = tmp_path / "cache" / "imagebind_huge.pth"
    for needle in ("CC BY-NC-SA 4.0", "non-commercial", preset.checkpoint_url, str(target),
                   "MEDIABIND_ACCEPT_LICENSE=true", "MEDIABIND_CHECKPOINT"):
        assert needle in message
    assert not target.exists()


def test_accepted_licence_downloads_into_the_cache(server, tmp_path) -> None:
    url, _ = server
    preset = dataclasses.replace(get_preset("imagebind_huge"), checkpoint_url=url)
    path = resolve_checkpoint(preset, _settings(tmp_path, accept_license=True))
    assert path == tmp_path / "cache" / "imagebind_huge.pth"
    assert path.read_bytes() == PAYLOAD


def test_offline_error_names_url_and_target(tmp_path) -> None:
    url = "http://127.0.0.1:9/imagebind_huge.pth"  # discard port: nothing listens
    preset = dataclasses.replace(get_preset("imagebind_huge"), checkpoint_url=url)
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(preset, _settings(tmp_path, accept_license=True))
    assert url in str(caught.value)
    assert str(tmp_path / "cache" / "imagebind_huge.pth") in str(caught.value)


# --- loading --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> tuple[Path, ImageBindModel]:
    model = build_model(get_preset("imagebind_tiny"))
    path = tmp_path_factory.mktemp("ckpt") / "imagebind_tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model


def _fresh(modalities) -> ImageBindModel:
    return ImageBindModel(get_preset("imagebind_tiny").config, modalities).eval()


def test_loads_only_the_built_modalities_from_a_full_file(tiny_file) -> None:
    path, full = tiny_file
    model = load_weights(_fresh(["audio", "imu"]), path)
    x = torch.randn(2, 6, 2000)
    assert torch.equal(model.embed("imu", x), full.embed("imu", x))
    assert set(model.state_dict()) == {k for k in full.state_dict()
                                       if k.split(".")[1] in ("audio", "imu")}


def test_checkpoint_preset_builds_on_meta_and_loads(tiny_file) -> None:
    path, full = tiny_file
    as_checkpoint = dataclasses.replace(get_preset("imagebind_tiny"), random_seed=None)
    model = build_model(as_checkpoint, modalities=["depth"], checkpoint=path)
    x = torch.randn(2, 1, 224, 224)
    assert torch.equal(model.embed("depth", x), full.embed("depth", x))
    assert not model.training


@pytest.mark.parametrize("damage, message", [
    ("drop", "1 missing keys"),
    ("reshape", "shape mismatches.*checkpoint \\[1, 1, 7\\]"),
    ("extra", "unexpected keys.*modality_trunks.depth.extra"),
])
def test_strict_loading_errors(tiny_file, tmp_path, damage, message) -> None:
    path, _ = tiny_file
    state = torch.load(path, weights_only=True)
    key = "modality_preprocessors.depth.cls_token"
    if damage == "drop":
        del state[key]
    elif damage == "reshape":
        state[key] = torch.zeros(1, 1, 7)
    else:
        state["modality_trunks.depth.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=message):
        load_weights(_fresh(["depth"]), bad)


def test_a_file_that_is_not_a_state_dict(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(_fresh(["imu"]), bad)
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(CheckpointError, match="not a plain state_dict"):
        load_weights(_fresh(["imu"]), bad)
