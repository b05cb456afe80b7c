"""Running ffmpeg/ffprobe safely: argument lists (never a shell), a timeout per call,
and the real error text.

ffmpeg-python builds the argument lists (``stream.compile()``); we run them with
``subprocess`` ourselves because ffmpeg-python's ``run`` has no timeout and its
exception only says "see stderr". :class:`FFmpegError` carries the tail of
stderr, so a ``Rejected`` reason says what ffmpeg actually complained about.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import IO

# Global options for every ffmpeg call: no stdin (a decoder must never wait on a
# terminal), no banner, and only errors on stderr unless a caller asks for more.
FFMPEG_QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
STDERR_TAIL_CHARS = 600


class FFmpegError(RuntimeError):
    """ffmpeg/ffprobe failed or timed out; the message ends with its stderr."""


def stderr_tail(stderr: bytes | str) -> str:
    """The last, most telling part of ffmpeg's stderr, on one line."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text[-STDERR_TAIL_CHARS:] or "(no stderr)"


def run_capture(args: Sequence[str], timeout_s: float) -> tuple[bytes, bytes]:
    """Run one command to completion; (stdout, stderr), or FFmpegError."""
    try:
        done = subprocess.run(list(args), capture_output=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise FFmpegError(f"{args[0]} timed out after {timeout_s:g} s: "
                          f"{stderr_tail(e.stderr or b'')}") from None
    except OSError as e:  # binary missing or not executable
        raise FFmpegError(f"cannot run {args[0]}: {e}") from None
    if done.returncode != 0:
        raise FFmpegError(f"{args[0]} exited with {done.returncode}: {stderr_tail(done.stderr)}")
    return done.stdout, done.stderr


def stream_stdout(args: Sequence[str], chunk_bytes: int, timeout_s: float) -> Iterator[bytes]:
    """Yield stdout in chunks of ``chunk_bytes`` (the last may be shorter) as it arrives.

    ``timeout_s`` bounds the wait for each chunk, not the whole run: a slow
    consumer (the GPU downstream) may hold the stream open as long as it needs,
    but a hung ffmpeg is killed. stderr goes to a temporary file so it can never
    fill a pipe and deadlock us.
    """
    with tempfile.TemporaryFile() as err:
        proc = _popen(args, err)
        try:
            yield from _read_chunks(proc, chunk_bytes, timeout_s, err)
            _wait_ok(proc, timeout_s, err, args[0])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _popen(args: Sequence[str], err: IO[bytes]) -> subprocess.Popen:
    try:
        return subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
    except OSError as e:
        raise FFmpegError(f"cannot run {args[0]}: {e}") from None


def _read_chunks(proc: subprocess.Popen, chunk_bytes: int, timeout_s: float,
                 err: IO[bytes]) -> Iterator[bytes]:
    fd = proc.stdout.fileno()
    buf = bytearray()
    while True:
        deadline = time.monotonic() + timeout_s
        while len(buf) < chunk_bytes:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                proc.kill()
                raise FFmpegError(f"{proc.args[0]} produced no output for {timeout_s:g} s: "
                                  f"{_read_err(err)}")
            data = os.read(fd, max(chunk_bytes - len(buf), 1 << 16))
            if not data:  # EOF
                if buf:
                    yield bytes(buf)
                return
            buf += data
        yield bytes(buf[:chunk_bytes])
        del buf[:chunk_bytes]


def _wait_ok(proc: subprocess.Popen, timeout_s: float, err: IO[bytes], name: str) -> None:
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FFmpegError(f"{name} did not exit within {timeout_s:g} s") from None
    if rc != 0:
        raise FFmpegError(f"{name} exited with {rc}: {_read_err(err)}")


def _read_err(err: IO[bytes]) -> str:
    err.flush()
    err.seek(0)
    return stderr_tail(err.read())
