"""Deployments, `mediabind serve` and the per-source locks: no Prefect server needed."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import locks
from flows.cli import main as cli_main
from flows.deployments import (
    NO_SERVER,
    ingest_deployment,
    prune_deployment,
    require_server,
    schedule_args,
)
from flows.locks import SourceBusyError, source_key, source_lock
from ingest.sources import normalise_source
from schemas import Settings


def test_ingest_deployment_carries_cron_parameters_and_a_limit(tmp_path):
    deployment = ingest_deployment(str(tmp_path / "archive/"), cron="0 * * * *",
                                   preset="imagebind_tiny", collection="media")
    schedule, = deployment.schedules
    assert isinstance(schedule.schedule, CronSchedule) and schedule.schedule.cron == "0 * * * *"
    assert deployment.parameters == {"source": str(tmp_path / "archive"), "executor": "local",
                                     "preset": "imagebind_tiny", "collection": "media"}
    assert deployment.entrypoint == "flows.ingest.ingest_archive"  # works from any folder
    assert deployment.concurrency_limit == 1
    assert deployment.concurrency_options.collision_strategy is ConcurrencyLimitStrategy.ENQUEUE
    assert deployment.name == f"ingest-{source_key(str(tmp_path / 'archive'))}"


def test_prune_deployment_carries_an_interval(tmp_path):
    deployment = prune_deployment(str(tmp_path), interval=3600, name="nightly")
    schedule, = deployment.schedules
    assert isinstance(schedule.schedule, IntervalSchedule)
    assert schedule.schedule.interval == timedelta(hours=1)
    assert deployment.parameters == {"source": str(tmp_path)}
    assert deployment.entrypoint == "flows.prune.prune" and deployment.name == "nightly"


@pytest.mark.parametrize("cron, interval", [(None, None), ("0 * * * *", 60.0), (None, -5.0)])
def test_exactly_one_valid_schedule_is_required(cron, interval):
    with pytest.raises(ValueError, match="schedule|interval"):
        schedule_args(cron, interval)


def test_an_invalid_cron_is_refused(tmp_path):
    with pytest.raises(ValueError):
        ingest_deployment(str(tmp_path), cron="every hour")


def test_serving_without_a_server_says_so(tmp_path, capsys):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(RuntimeError, match="PREFECT_API_URL"):
            require_server()
        code = cli_main(["serve", str(tmp_path), "--cron", "0 * * * *"])
    assert code == 2
    assert NO_SERVER in capsys.readouterr().err


def test_serving_against_a_dead_server_says_so(tmp_path):
    with (temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),
          pytest.raises(RuntimeError, match="does not answer")):
        require_server()


def test_serve_needs_a_schedule(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["serve", str(tmp_path)])
    assert "--cron" in capsys.readouterr().err


# --- locks ------------------------------------------------------------------------------


def test_sources_are_normalised_before_hashing(tmp_path):
    assert source_key(str(tmp_path) + "/") == source_key(str(tmp_path))
    assert normalise_source(f"file://{tmp_path}") == str(tmp_path)
    assert normalise_source("s3://bucket/media/") == "s3://bucket/media"
    assert source_key("s3://bucket/a") != source_key("s3://bucket/b")


def test_a_held_source_lock_refuses_a_second_run(tmp_path):
    settings = Settings(home=tmp_path)
    source = str(tmp_path / "archive")
    with source_lock(settings, source) as path:
        assert str(source) in path.read_text()
        with (pytest.raises(SourceBusyError, match="already ingesting"),
              source_lock(settings, source, wait_s=0.3)):
            pass
        with source_lock(settings, str(tmp_path / "other"), wait_s=0):
            pass  # another source is not blocked
    with source_lock(settings, source, wait_s=0):
        pass  # released on exit


def test_a_waiting_run_gets_the_lock_when_it_is_released(tmp_path):
    settings = Settings(home=tmp_path)
    release = threading.Event()

    def hold() -> None:
        with source_lock(settings, "s3://b/x"):
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        while not locks.lock_path(settings, "s3://b/x").exists():
            pass
        threading.Timer(0.3, release.set).start()
        with source_lock(settings, "s3://b/x", wait_s=5):
            assert release.is_set()
    finally:
        release.set()
        holder.join()


def test_no_server_means_no_global_slot():
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not locks.server_configured()
        with locks.source_slot("/anything") as name:
            assert name is None


def test_lock_files_live_under_home(tmp_path):
    path = locks.lock_path(Settings(home=tmp_path), "/data")
    assert path.parent == Path(tmp_path) / "locks"
