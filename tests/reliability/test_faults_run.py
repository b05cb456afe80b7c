"""Process faults mid-run: a Ray worker killed, the whole ``mediabind ingest`` killed.

After recovery every point is stored exactly once, counted in the store against a
clean run's points; the figures record that count, the work done again and the
seconds each fault cost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import (
    POINTS_PER_ITEM,
    PointTally,
    item_ids,
    make_corpus,
    stored_items,
    tally_points,
)
from pipeline_helpers import open_ready_store, settings_for

from embed_workers.pipeline import run_ingest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
RUN_DEADLINE_S = 60  # a clean Ray run of this corpus takes ~20 s here
ENCODE_WORKER = "EncodeActor"  # Ray Data names the pool's worker process after the UDF
PROGRESS = re.compile(r"(\d+)/\S+ items, (\d+) segments")


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """Enough items that shards are still being read when a fault strikes."""
    return make_corpus(tmp_path_factory.mktemp("big") / "media", images=40, texts=8, seed=7)


def _ray_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::") and marker in cmdline:
            found.append(proc)
    return found


def _kill_encode_worker_once_busy(deadline_s: float, settle_s: float = 0.5) -> int | None:
    """SIGKILL the encode actor's worker once it is running a task; its pid, or None."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        busy = [p for p in _ray_processes(ENCODE_WORKER) if ".submit" in " ".join(p.cmdline())]
        if busy:
            time.sleep(settle_s)  # let it take a block of inputs first
            busy[0].send_signal(signal.SIGKILL)
            return busy[0].pid
        time.sleep(0.1)
    return None


@dataclass
class KilledRayRun:
    killed_pid: int | None
    finished_by_itself: bool
    error: str | None
    items_completed: int | None
    items_seen: int | None
    killed_run_s: float
    rerun_items_skipped: int
    rerun_s: float
    tally: PointTally
    items: int


@pytest.fixture(scope="module")
def killed_ray_run(ray_session, big_corpus, clean_layout, tmp_path_factory) -> KilledRayRun:
    """One Ray run whose encode worker is SIGKILLed mid-run, then a rerun if needed."""
    settings = settings_for(tmp_path_factory.mktemp("ray_kill"), upsert_batch=4)
    outcome: dict = {}

    def ingest(store) -> None:
        try:
            outcome["report"] = run_ingest(str(big_corpus), store, settings=settings,
                                           executor="ray")
        except Exception as exc:  # recorded: the test decides what is acceptable
            outcome["error"] = f"{type(exc).__name__}: {exc}"[:500]

    with open_ready_store(settings) as store:
        started = time.perf_counter()
        run = threading.Thread(target=ingest, args=(store,), daemon=True)
        run.start()
        pid = _kill_encode_worker_once_busy(RUN_DEADLINE_S)
        run.join(RUN_DEADLINE_S)
        finished = not run.is_alive()
        if not finished:  # a hang is what this test is here to catch: give it a last minute
            run.join(60)
            assert not run.is_alive(), "the run hung after its encode worker was killed"
        killed_s = time.perf_counter() - started
        started = time.perf_counter()
        rerun = run_ingest(str(big_corpus), store, settings=settings, executor="ray")
        rerun_s = time.perf_counter() - started
        tally = tally_points(store, clean_layout, big_corpus)  # asserted by the test
    report = outcome.get("report")
    return KilledRayRun(pid, finished, outcome.get("error"),
                        report.items_completed if report else None,
                        report.items_seen if report else None, killed_s,
                        rerun.items_skipped, rerun_s, tally, len(item_ids(big_corpus)))


def test_after_a_killed_ray_worker_the_rerun_stores_every_point_once(killed_ray_run,
                                                                      figures) -> None:
    run = killed_ray_run
    figures("ray_encode_worker_killed", killed_pid=run.killed_pid,
            run_finished_by_itself=run.finished_by_itself, run_error=run.error,
            items_completed_by_killed_run=run.items_completed,
            items_seen_by_killed_run=run.items_seen, items=run.items,
            killed_run_s=run.killed_run_s, rerun_skipped_items=run.rerun_items_skipped,
            rerun_s=run.rerun_s, **run.tally.figures())
    assert run.killed_pid is not None, "no busy encode worker was found to kill"
    run.tally.check()
    assert run.tally.stored == POINTS_PER_ITEM * run.items


def test_a_killed_ray_worker_does_not_stop_or_shorten_the_run(killed_ray_run) -> None:
    run = killed_ray_run
    assert run.killed_pid is not None, "no busy encode worker was found to kill"
    assert run.finished_by_itself and run.error is None
    assert run.items_completed == run.items_seen == run.items


# --- the whole run killed ---------------------------------------------------------------


def _cli_env(home: Path) -> dict[str, str]:
    return os.environ | {"MEDIABIND_HOME": str(home), "MEDIABIND_DEVICE": "cpu",
                         "MEDIABIND_STORE": "edge", "MEDIABIND_PRESET": "imagebind_tiny",
                         "MEDIABIND_UPSERT_BATCH": "2", "MEDIABIND_DECODE_WORKERS": "1"}


def _mediabind(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main())",
            *args]


def _kill_after_segments(proc: subprocess.Popen, segments: int) -> int:
    """SIGKILL ``proc`` once its progress line reports ``segments``; the count it showed."""
    assert proc.stderr is not None
    for line in proc.stderr:
        match = PROGRESS.search(line)
        if match and int(match.group(2)) >= segments:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return int(match.group(2))
    raise AssertionError(f"the run ended (rc {proc.wait()}) before {segments} segments")


def test_a_killed_ingest_process_resumes_exactly_once(tmp_path, clean_layout, figures) -> None:
    # Progress lines come every 2 s: a corpus that takes several times that to embed.
    # (150 items once all landed before the second line on an idle machine, so the
    # kill found nothing left to do.)
    big_corpus = make_corpus(tmp_path / "media", images=480, texts=120, seed=9)
    home = tmp_path / "home"
    started = time.perf_counter()
    proc = subprocess.Popen(_mediabind("ingest", str(big_corpus), "--run-id", "killed"),
                            env=_cli_env(home), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        shown = _kill_after_segments(proc, segments=6)
    finally:
        proc.kill()
    killed_s = time.perf_counter() - started
    assert proc.returncode == -signal.SIGKILL
    settings = settings_for(home)
    with open_ready_store(settings) as store:
        kept, items_kept = store.count(), stored_items(store)
    assert items_kept < len(item_ids(big_corpus)), "the run ended its work before the kill"
    started = time.perf_counter()
    rerun = subprocess.run(_mediabind("ingest", str(big_corpus), "--json"), env=_cli_env(home),
                           capture_output=True, text=True, timeout=240)
    rerun_s = time.perf_counter() - started
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    items = len(item_ids(big_corpus))
    # Items the killed run stored are settled in the ledger (not read again) or, when it
    # died between their upsert and the ledger's, recognised by their bytes.
    settled = report["items_unchanged"] + report["items_skipped"]
    assert settled > 0 and report["items_completed"] > 0
    assert report["error"] is None
    assert settled + report["items_completed"] == items
    with open_ready_store(settings) as store:
        tally = tally_points(store, clean_layout, big_corpus)
    figures("ingest_process_sigkilled", items=items, killed_after_segments=shown,
            points_kept=kept, items_kept=items_kept,
            rerun_skipped_items=settled, rerun_unread_items=report["items_unchanged"],
            rerun_completed_items=report["items_completed"],
            points_rewritten=kept + report["points_written"] - tally.stored,
            killed_run_s=killed_s, rerun_s=rerun_s, **tally.figures())
    tally.check()
