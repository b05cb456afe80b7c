"""Store faults mid-run: Qdrant unavailable for a while, and the embedded store's disk full.

Each test ends with every point of the corpus stored exactly once, counted in
the store against a clean run's points (``tally_points``), and records what the
fault cost (points lost or doubled, segments encoded again, seconds) through
the ``figures`` fixture before asserting, so a failing run still shows its count.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_exactly_once, item_ids, make_corpus, stored_items, tally_points
from pipeline_helpers import open_ready_store, settings_for

from embed_workers.pipeline import run_ingest
from search import store as store_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
TESTS = Path(__file__).resolve().parents[1]
SHORT_OUTAGE_S = 1.5
BEYOND_RETRIES_S = 30  # how much longer than the retries' whole backoff the outage lasts
TMPFS_MIB = 320
LEAVE_FREE_MIB = 8  # under the store's own safety margin


class Outage:
    """Wraps a backend's ``upsert``: after ``after`` good calls, ``ConnectionError`` for
    ``seconds``, then the real call again (what a restarting Qdrant looks like)."""

    def __init__(self, backend, after: int, seconds: float) -> None:
        self.real, self.after, self.seconds = backend.upsert, after, seconds
        self.calls, self.refused, self.started = 0, 0, None
        backend.upsert = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.after:
            self.started = self.started or time.monotonic()
            if time.monotonic() - self.started < self.seconds:
                self.refused += 1
                raise ConnectionError("injected: Qdrant is unavailable")
        return self.real(*args, **kwargs)


def _backoff_s() -> list[float]:
    """The sleeps between the store's attempts, as search/store.py spaces them."""
    return [store_module.RETRY_BASE_S * 2**a for a in range(store_module.RETRY_ATTEMPTS - 1)]


def _retry_budget_s() -> float:
    return sum(_backoff_s())


def _run_outcome(error: str | None) -> str:
    return "run completed" if error is None else f"run failed: {error[:120]}"


def test_a_short_outage_is_ridden_out_by_the_store_retries(corpus, encoder, clean_layout,
                                                           tmp_path, figures) -> None:
    settings = settings_for(tmp_path / "home", upsert_batch=4)
    with open_ready_store(settings) as store:
        outage = Outage(store.backend, after=2, seconds=SHORT_OUTAGE_S)
        started = time.perf_counter()
        report = run_ingest(str(corpus), store, settings=settings, encoder=encoder)
        wall = time.perf_counter() - started
        tally = tally_points(store, clean_layout, corpus)
    figures("qdrant_unavailable_1.5s", outcome=_run_outcome(report.error),
            outage_s=outage.seconds, refused_upserts=outage.refused, items=len(item_ids(corpus)),
            **tally.figures(), segments_reencoded=encoder.encoded - tally.expected_segments,
            run_s=wall, store_stage_s=report.stage_seconds["store"], retry_backoff_s=_backoff_s())
    assert outage.refused >= 2 and report.error is None
    tally.check()
    assert report.items_completed == len(item_ids(corpus))


def test_an_outage_longer_than_the_retries_fails_clearly_and_the_rerun_completes(
        corpus, encoder, clean_layout, tmp_path, figures) -> None:
    settings = settings_for(tmp_path / "home", upsert_batch=4)
    with open_ready_store(settings) as store:
        outage = Outage(store.backend, after=2, seconds=_retry_budget_s() + BEYOND_RETRIES_S)
        started = time.perf_counter()
        with pytest.raises(ConnectionError, match="unavailable") as failure:
            run_ingest(str(corpus), store, settings=settings, encoder=encoder, run_id="cut")
        failed_s = time.perf_counter() - started
        kept, items_kept = store.count(), stored_items(store)
    saved = json.loads((settings.runs_path / "cut" / "report.json").read_text())
    assert "unavailable" in saved["error"]
    with open_ready_store(settings) as store:  # Qdrant is back: a new handle, no outage
        assert store.count() == kept > 0
        started = time.perf_counter()
        rerun = run_ingest(str(corpus), store, settings=settings, encoder=encoder)
        rerun_s = time.perf_counter() - started
        tally = tally_points(store, clean_layout, corpus)
    figures("qdrant_unavailable_beyond_retries", outcome=_run_outcome(rerun.error),
            outage_s=outage.seconds, retry_attempts=store_module.RETRY_ATTEMPTS,
            retry_budget_s=_retry_budget_s(), error_type=type(failure.value).__name__,
            report_has_error="unavailable" in (saved["error"] or ""), points_kept=kept,
            items_kept=items_kept, items=len(item_ids(corpus)), **tally.figures(),
            rerun_skipped_items=rerun.items_skipped,
            segments_reencoded=encoder.encoded - tally.expected_segments,
            failed_run_s=failed_s, rerun_s=rerun_s)
    tally.check()
    assert rerun.items_skipped > 0
    assert rerun.items_skipped + rerun.items_completed == len(item_ids(corpus))


@pytest.mark.server
@pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="needs a Qdrant server at QDRANT_URL")
def test_server_outage_is_ridden_out(corpus, encoder, clean_layout, tmp_path) -> None:
    settings = settings_for(tmp_path / "home", upsert_batch=4, store="server",
                            collection=f"faults_{os.getpid()}")
    with open_ready_store(settings) as store:
        outage = Outage(store.backend, after=2, seconds=SHORT_OUTAGE_S)
        run_ingest(str(corpus), store, settings=settings, encoder=encoder)
        assert outage.refused >= 2
        assert_exactly_once(store, clean_layout, corpus)


# --- the embedded store's disk fills up ---------------------------------------------------

FULL_DISK_RUN = """
import json, sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from pipeline_helpers import open_ready_store, settings_for
from embed_workers.pipeline import run_ingest
settings = settings_for(Path(sys.argv[2]), upsert_batch=4)
with open_ready_store(settings) as store:
    try:
        report = run_ingest(sys.argv[1], store, settings=settings, executor="local")
        print(json.dumps({"ok": True, "skipped": report.items_skipped,
                          "completed": report.items_completed}))
    except OSError as exc:
        print(json.dumps({"ok": False, "errno": exc.errno, "error": str(exc),
                          "type": type(exc).__name__}))
"""


def _ingest_in_subprocess(source: Path, home: Path) -> dict:
    """A separate process: a store that dies of SIGBUS must not take pytest with it."""
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", FULL_DISK_RUN,
                           str(source), str(home), str(TESTS)],
                          capture_output=True, timeout=150, text=True)
    assert done.returncode == 0, f"rc {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A ``TMPFS_MIB`` tmpfs (needs root or CAP_SYS_ADMIN; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs",
                           str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_bytes: int) -> Path:
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        os.posix_fallocate(fh.fileno(), 0, max(free - leave_bytes, 0))
    return filler


def test_a_full_disk_fails_the_run_clearly_and_keeps_what_was_stored(
        small_disk, clean_layout, tmp_path, figures) -> None:
    first = make_corpus(tmp_path / "first", images=6, texts=2, seed=1)
    second = make_corpus(tmp_path / "second", images=6, texts=2, seed=2)
    both = tmp_path / "both"
    shutil.copytree(first, both / "first")
    shutil.copytree(second, both / "second")
    home = small_disk / "home"
    assert _ingest_in_subprocess(first, home)["ok"]
    filler = _fill(small_disk, leave_bytes=LEAVE_FREE_MIB * 2**20)
    free_mib = shutil.disk_usage(small_disk).free / 2**20

    full = _ingest_in_subprocess(both, home)
    assert not full["ok"] and full["errno"] == errno.ENOSPC, full
    assert "no space left" in full["error"] and "run again" in full["error"]
    filler.unlink()  # before reopening here: a read that faults on a full tmpfs is a SIGBUS
    settings = settings_for(home)
    with open_ready_store(settings) as store:  # nothing stored before is lost or damaged
        kept = tally_points(store, clean_layout, first)
        probe = store.retrieve([store.scroll(limit=1)[0].id], with_vectors=True)[0]
        hit = store.search(probe.vector, limit=1)
    rerun = _ingest_in_subprocess(both, home)
    with open_ready_store(settings) as store:
        tally = tally_points(store, clean_layout, first, second)
    figures("embedded_store_disk_full", tmpfs_mib=TMPFS_MIB, free_mib_after_fill=free_mib,
            error_type=full["type"], errno=errno.errorcode.get(full["errno"], full["errno"]),
            **kept.figures("first_run_points"), probe_found=hit[0].id == probe.id,
            probe_score=hit[0].score, rerun_ok=rerun["ok"], items=len(item_ids(both)),
            rerun_skipped_items=rerun.get("skipped"),
            rerun_completed_items=rerun.get("completed"), **tally.figures())
    kept.check()
    assert hit[0].id == probe.id and hit[0].score > 0.99
    assert rerun["ok"] and rerun["skipped"] == len(item_ids(first)), rerun
    tally.check()
