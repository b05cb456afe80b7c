"""`mediabind search`: argument parsing (fast) and the command over an ingested archive (slow)."""

from __future__ import annotations

import argparse
import json

import pytest
from search_helpers import PRESET, TARGET, TEXT, WINDOW_START_S, ingested_archive

from flows.cli import build_parser, main
from flows.commands.search import parse_weights, parse_where_json, query_inputs


def test_parse_weights():
    assert parse_weights("image=0.5,audio=0.5") == {"image": 0.5, "audio": 0.5}
    assert parse_weights(" text = 2 ") == {"text": 2.0}
    for bad in ("image", "image=x", "=1,"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=NUMBER"):
            parse_weights(bad)


def test_parse_where_json():
    assert parse_where_json('{"kind": "video"}') == {"kind": "video"}
    with pytest.raises(argparse.ArgumentTypeError, match="not valid JSON"):
        parse_where_json("{kind: video}")
    with pytest.raises(argparse.ArgumentTypeError, match="JSON object"):
        parse_where_json("[1]")


def test_query_words_are_joined_and_inputs_collected():
    args = build_parser().parse_args(
        ["search", "a", "dog", "barking", "--image", "x.png", "--image", "y.png",
         "--negative-text", "rain", "--weights", "text=2,image=1", "--flat"])
    assert query_inputs(args) == {"text": ["a dog barking"],
                                  "image": [args.image[0], args.image[1]]}
    assert query_inputs(args, prefix="negative_") == {"text": ["rain"]}
    assert args.weights == {"text": 2.0, "image": 1.0} and args.flat


def test_an_empty_query_is_a_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path))
    assert main(["search"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mediabind search: error: empty query") and "Traceback" not in err


def test_an_empty_store_is_a_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDIABIND_HOME", str(tmp_path))
    monkeypatch.setenv("MEDIABIND_PRESET", PRESET)
    assert main(["search", "anything"]) == 2
    assert "ingest something first" in capsys.readouterr().err


# --- over the ingested archive -----------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return ingested_archive(tmp_path_factory.getbasetemp() / "search-archive")


@pytest.fixture
def cli(archive, monkeypatch, capsys):
    s = archive.settings
    # (MEDIABIND_VIDEO_CROPS is left out: the queries here are audio and text.)
    env = {"HOME": s.home, "PRESET": s.preset, "DEVICE": s.device, "DTYPE": s.dtype,
           "STORE": s.store}
    for key, value in env.items():
        monkeypatch.setenv(f"MEDIABIND_{key}", str(value))

    def run(*argv: str) -> str:
        code = main(["search", *argv])
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    return run


@pytest.mark.slow
def test_table_shows_rank_score_file_kind_moment_snippet(cli, archive):
    out = cli("--audio", str(archive.query("window.wav")), "--limit", "3")
    header, rule, first, *rest = out.strip().splitlines()
    assert header.split() == ["rank", "score", "file", "kind", "moment", "snippet"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert first.split()[0] == "1" and TARGET in first and "video" in first
    assert "00:02–00:04" in first and len(rest) == 2


@pytest.mark.slow
def test_json_output_parses_and_pages(cli, archive):
    window = str(archive.query("window.wav"))
    body = json.loads(cli("--audio", window, "--json", "--limit", "2"))
    top = body["hits"][0]
    assert top["source_uris"][0].endswith(TARGET) and top["start_s"] == WINDOW_START_S
    following = json.loads(cli("--audio", window, "--json", "--limit", "2", "--offset", "2"))
    assert [h["rank"] for h in following["hits"]] == [3, 4]
    seen = {h["item_id"] for h in body["hits"]} & {h["item_id"] for h in following["hits"]}
    assert not seen


@pytest.mark.slow
def test_text_words_filters_and_flat_rows(cli, archive):
    body = json.loads(cli(*TEXT.split(), "--json", "--limit", "1"))
    assert body["hits"][0]["source_uris"][0].endswith("dawn.txt")
    flat = json.loads(cli("--audio", str(archive.query("window.wav")), "--flat", "--kind",
                          "video", "--where", '{"modality": "audio"}', "--json", "--limit", "20"))
    assert flat["grouped"] is False and flat["hits"]
    assert {(h["kind"], h["modality"]) for h in flat["hits"]} == {("video", "audio")}


@pytest.mark.slow
def test_weights_and_negatives_reach_the_query(cli, archive):
    window = str(archive.query("window.wav"))
    heavy_text = json.loads(cli("--audio", window, "--text", TEXT, "--weights",
                                "audio=1,text=4", "--json", "--limit", "1"))
    assert heavy_text["hits"][0]["source_uris"][0].endswith("dawn.txt")
    negated = json.loads(cli("--audio", window, "--text", TEXT, "--negative-text", TEXT,
                             "--negative-weight", "0.9", "--json", "--limit", "1"))
    assert negated["hits"][0]["source_uris"][0].endswith(TARGET)
