"""`mediabind ingest` through the real CLI entry point, on a small generated folder."""

from __future__ import annotations

import json

import pytest
from media import ffmpeg

from flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDIABIND_DEVICE", "cpu")
    monkeypatch.setenv("MEDIABIND_STORE", "edge")
    folder = tmp_path / "media"
    folder.mkdir()
    ffmpeg("-f", "lavfi", "-i", "color=c=blue:size=32x32", "-frames:v", "1",
           str(folder / "blue.png"))
    (folder / "note.txt").write_text("the sound of waves on a beach at night")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return folder


def test_ingest_prints_report_json_and_exits_zero_despite_rejections(env, tmp_path, capsys) -> None:
    code = main(["ingest", str(env), "--preset", "imagebind_tiny", "--run-id", "r1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert report["run_id"] == "r1" and report["items_completed"] == 2
    assert [r["uri"].endswith("broken.wav") for r in report["rejected"]] == [True]
    assert "items/s" in err  # the progress line
    folder = tmp_path / "home" / "runs" / "r1"
    assert report["report_dir"] == str(folder)
    assert (folder / "report.json").is_file() and (folder / "items.parquet").is_file()

    # The rerun lists the folder and reads nothing: both files and the broken one (a
    # permanent verdict on its bytes) are settled in the ledger and unchanged.
    code = main(["ingest", str(env), "--preset", "imagebind_tiny", "--json"])
    again = json.loads(capsys.readouterr().out)
    assert code == 0 and again["items_unchanged"] == 3 and again["source_bytes_read"] == 0
    assert again["items_completed"] == 0 and again["rejected"] == []

    (env / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk, edited")  # changed
    code = main(["ingest", str(env), "--preset", "imagebind_tiny"])
    out, _ = capsys.readouterr()
    assert code == 0 and "2 unchanged" in out and "1 rejected" in out and "report: " in out


@pytest.mark.parametrize("argv, message", [
    (["ingest", "{tmp}/missing"], "source not found"),
    (["ingest", "{tmp}", "--preset", "no_such_model"], "unknown model preset"),
    (["ingest", "{tmp}", "--preset", "imagebind_tiny", "--manifest", "{tmp}/none.csv"],
     "manifest not found"),
    (["ingest", "{tmp}", "--preset", "imagebind_tiny", "--run-id", "../escaped"],
     "invalid run id"),
])
def test_user_errors_exit_non_zero_with_one_line(env, tmp_path, capsys, argv, message) -> None:
    code = main([a.format(tmp=tmp_path) for a in argv])
    _, err = capsys.readouterr()
    assert code == 2
    assert "mediabind ingest: error:" in err and message in err
    assert not (tmp_path / "escaped").exists()


def test_a_failed_first_run_does_not_pin_the_alias(env, tmp_path, capsys) -> None:
    """A missing source or missing weights create nothing: the next real ingest with
    another preset gets the alias."""
    from schemas import Settings
    from search.store import open_store

    assert main(["ingest", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "home" / "qdrant").exists()
    assert main(["ingest", str(env)]) == 2  # imagebind_huge: no checkpoint here
    assert not (tmp_path / "home" / "qdrant").exists()
    assert main(["ingest", str(env), "--preset", "imagebind_tiny"]) == 0
    _, err = capsys.readouterr()
    assert "note: searches through" not in err
    with open_store(Settings()) as store:  # not get_settings(): cached by earlier tests
        assert store.collection_info()["model_id"].startswith("imagebind_tiny")


def test_the_cli_takes_the_source_lock_and_records_the_manifest(env, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    """The CLI starts its run through the same entry as the flows: the source's lock is
    taken (a second run is refused) and a manifest is recorded for ``reembed``."""
    from flows import locks
    from flows.run import recorded_manifest
    from ingest.sources import normalise_source
    from schemas import Settings

    monkeypatch.setattr(locks, "BUSY_WAIT_S", 0.2)
    with locks.source_lock(Settings(), str(env)):
        assert main(["ingest", str(env), "--preset", "imagebind_tiny"]) == 2
    assert "already ingesting" in capsys.readouterr().err
    manifest = tmp_path / "meta.csv"
    manifest.write_text("member,camera\nclip.wav,A\n")
    assert main(["ingest", str(env), "--preset", "imagebind_tiny", "--manifest",
                 str(manifest)]) == 0
    assert recorded_manifest(Settings(), normalise_source(str(env))) == str(manifest)


def test_info_audit_compares_the_ledger_with_the_points_in_the_store(env, tmp_path,
                                                                      capsys) -> None:
    assert main(["ingest", str(env), "--preset", "imagebind_tiny", "--json"]) == 0
    capsys.readouterr()
    assert main(["info", "--audit", "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert audit["agrees"] and audit["items"] == 2 and audit["points"] == 2  # one point each

    from schemas import Settings
    from search.store import open_store

    with open_store(Settings()) as store:  # lose one point behind the ledger's back
        store.delete_where({"kind": "text", "segment_index": 0})
    assert main(["info", "--audit"]) == 1
    out = capsys.readouterr().out
    assert "disagree: 1 items with a different point count" in out
    assert "the ledger records 1 points, the store holds 0" in out
