"""Search stays up while ingesting: with `mediabind ui` holding the embedded store, a
`mediabind ingest` from another process hands its run to the ui instead of failing
on the lock, and the page keeps answering while the run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from search_helpers import ffmpeg

from flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TOKEN = "handoff-token"
RUN_DEADLINE_S = 200  # alone about 15 s; the test's own timeout is 300 s


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    values = {"MEDIABIND_HOME": str(tmp_path / "home"), "MEDIABIND_STORE": "edge",
              "MEDIABIND_PRESET": "imagebind_tiny", "MEDIABIND_DEVICE": "cpu",
              "MEDIABIND_UI_TOKEN": TOKEN}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    return {**os.environ, **values}


@pytest.fixture
def ui(env):
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert line.startswith("mediabind ui: http://"), line + proc.stderr.read()
    # Drain both pipes from now on: a full pipe would block the UI in its next write
    # (its handed run logs as it goes), and the run would never end.
    said: list[str] = []
    drains = [threading.Thread(target=lambda f=f: said.extend(f), daemon=True)
              for f in (proc.stdout, proc.stderr)]
    for drain in drains:
        drain.start()
    proc.said = said
    yield proc, line.split()[2].split("?")[0]
    proc.terminate()
    proc.wait(timeout=30)


def get(url: str) -> tuple[int, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def media(folder: Path, videos: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(videos):
        ffmpeg("-f", "lavfi", "-i", f"testsrc=size=64x48:rate=5:duration=16:decimals={i % 3}",
               "-f", "lavfi", "-i", f"sine=frequency={300 + 100 * i}:duration=16:sample_rate=16000",
               "-c:v", "mpeg4", "-shortest", str(folder / f"clip{i}.mkv"))
    for i in range(5):
        (folder / f"note{i}.txt").write_text(f"note number {i} about the harbour\n")
    return folder


def test_an_ingest_is_handed_to_the_running_ui_and_search_stays_up(ui, tmp_path, capsys):
    proc, url = ui
    folder = media(tmp_path / "media", videos=4)
    samples: list[tuple[bool, int]] = []  # (a run was under way, the search's status)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            _, active = get(url + "api/runs/active")
            status, _ = get(url + "api/search?text=harbour")
            samples.append((bool(active), status))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    codes: list[object] = []

    def ingest() -> None:
        try:
            codes.append(main(["ingest", str(folder)]))
        except BaseException as exc:  # noqa: BLE001 - shown by the assertion below
            codes.append(exc)

    client = threading.Thread(target=ingest, daemon=True)
    try:
        client.start()
        client.join(timeout=RUN_DEADLINE_S)
    finally:
        done.set()
        watcher.join(timeout=60)
    if client.is_alive():  # say what the ui is doing before giving up on it
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2)
        pytest.fail(f"the handed run did not end in {RUN_DEADLINE_S} s; the ui's threads:\n"
                    + "".join(proc.said[-200:]))
    code = codes[0]

    out = capsys.readouterr()
    assert code == 0, out.err + "".join(proc.said[-40:])
    assert "9 ingested" in out.out and "items/s" in out.err  # its report and its progress
    assert any(active and status in (200, 404) for active, status in samples)
    assert all(status in (200, 404) for _, status in samples)  # 404: nothing stored yet
    status, found = get(url + "api/search?text=harbour&limit=20")
    assert status == 200 and len(found["hits"]) == 9
    runs = get(url + "api/runs")[1]
    assert len(runs) == 1 and runs[0]["items_completed"] == 9
    assert proc.poll() is None


def test_a_ray_run_is_refused_by_the_ui_with_what_to_do(ui, tmp_path, capsys):
    folder = media(tmp_path / "media", videos=0)
    assert main(["ingest", str(folder), "--executor", "ray"]) == 2
    assert "local executor" in capsys.readouterr().err


def test_without_a_running_ui_a_run_opens_the_store_itself(env, tmp_path, capsys):
    folder = media(tmp_path / "media", videos=0)
    stale = Path(env["MEDIABIND_HOME"]) / "web" / "ui.json"  # a ui that died uncleanly
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"pid": 2**22 + 12345, "space": "elsewhere", "url":
                                 "http://127.0.0.1:9/", "token": None, "store_dir": "x"}))
    assert main(["ingest", str(folder)]) == 0
    assert "5 ingested" in capsys.readouterr().out
