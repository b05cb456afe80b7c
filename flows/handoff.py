"""Runs handed to a running `mediabind ui`, so search stays up while ingesting.

An embedded store admits one process. While `mediabind ui` serves it, it leaves
a beacon in ``HOME/web/ui.json`` (its pid and pid space, URL, token; readable
by its owner only). ``start_run`` looks for a live one before it opens the
store: when there is one, the run is handed over (``POST /api/runs``) and runs
inside the UI's process, through the same ``start_run`` on the store the UI
holds; this process follows its progress and returns its outcome as if it had
run it. Without a running UI nothing changes; a Qdrant server needs none of it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Settings
from schemas.sink import pid_space

POLL_S = 1.0
HTTP_TIMEOUT_S = 30.0
# Settings a handed run brings with it; the UI keeps its own for the rest (its store).
RUN_SETTINGS = ("preset", "checkpoint", "collection", "segment_s", "stride_s", "video_crops",
                "one_point_items", "text_overlap_tokens", "device", "dtype", "decode_workers",
                "encode_threads", "accept_license", "video_decoder", "audio_decoder",
                "video_sampling")


class HandoffError(RuntimeError):
    """The UI refused the run or went away during it."""


@dataclass(frozen=True, slots=True)
class Beacon:
    pid: int
    space: str
    url: str
    token: str | None
    store_dir: str
    run_secret: str = ""  # what POST /api/runs must carry (web.app.Guard)

    def alive(self) -> bool:
        if self.space != pid_space():
            return False  # another machine or container: its pid says nothing here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def beacon_path(settings: Settings) -> Path:
    return settings.home / "web" / "ui.json"


@contextmanager
def beacon(settings: Settings, url: str, token: str | None, run_secret: str) -> Iterator[Path]:
    """Announce this process's UI for runs to be handed to, while the block runs."""
    path = beacon_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "space": pid_space(), "url": url, "token": token,
              "store_dir": str(settings.qdrant_dir.resolve()), "run_secret": run_secret}
    part = path.with_name(f".ui.json.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(part, path)
    try:
        yield path
    finally:
        if running_ui_at(path) and json.loads(path.read_text())["pid"] == os.getpid():
            path.unlink(missing_ok=True)


def running_ui(settings: Settings) -> Beacon | None:
    """The live UI serving this embedded store, if any (None for a Qdrant server)."""
    if settings.store_kind == "server":
        return None
    found = running_ui_at(beacon_path(settings))
    if found is None or found.store_dir != str(settings.qdrant_dir.resolve()):
        return None
    return found


def running_ui_at(path: Path) -> Beacon | None:
    try:
        found = Beacon(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return found if found.alive() else None


def run_settings(settings: Settings) -> dict[str, Any]:
    """What of the caller's settings a handed run takes along (JSON)."""
    dumped = settings.model_dump(mode="json", include=set(RUN_SETTINGS))
    return {k: v for k, v in dumped.items() if v is not None}


def hand_over(ui: Beacon, source: str, settings: Settings, *, executor: str, run_id: str,
              manifest: str | None, progress: Any = None) -> dict[str, Any]:
    """Run in the UI's process; its final state (``report_dir`` among it) once it ends."""
    manifest = str(Path(manifest).expanduser().resolve()) if manifest else None  # ours, not
    body = {"source": source, "executor": executor, "run_id": run_id,  # the ui's, cwd
            "manifest": manifest, "settings": run_settings(settings)}
    _call(ui, "POST", "/api/runs", body)
    while True:
        state = _call(ui, "GET", f"/api/runs/{run_id}/state")
        if progress is not None and state.get("progress"):
            from embed_workers.report import Progress

            progress(Progress(**state["progress"]))
        if state["state"] != "running":
            return state
        time.sleep(POLL_S)


def _call(ui: Beacon, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(ui.url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Mediabind-Run-Secret", ui.run_secret)
    if ui.token:
        request.add_header("Authorization", f"Bearer {ui.token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = _detail(exc)
        raise HandoffError(f"the mediabind ui at {ui.url} (pid {ui.pid}) refused the run: "
                           f"{detail}") from None
    except OSError as exc:
        raise HandoffError(f"the mediabind ui at {ui.url} (pid {ui.pid}) holds the store "
                           f"but did not answer ({exc}); stop it, or wait for it, and "
                           "rerun: the run resumes where it stopped") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("detail", str(exc))
    except ValueError:
        return str(exc)
