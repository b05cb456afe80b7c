"""Text chunking: fits the token budget, overlaps, keeps offsets; subtitles keep cue times."""

from __future__ import annotations

import pytest
from media import media_item

from ingest.decode import decode_item
from ingest.decode.text import MAX_TOKENS, chunk_text, estimate_tokens, parse_cues, read_text
from schemas import Kind, Modality, Rejected, SegmentPolicy


def words_counter(text: str) -> int:
    return len(text.split())


def decode(path, settings, counter=None):
    return list(decode_item(media_item(path, Kind.TEXT), path, SegmentPolicy(), settings,
                            count_tokens=counter))


def test_long_text_is_chunked_within_budget_with_overlap(tmp_path, decode_settings):
    text = " ".join(f"word{i}" for i in range(400))
    path = tmp_path / "doc.txt"
    path.write_text(text)
    out = decode(path, decode_settings, words_counter)
    assert all(s.modality == Modality.TEXT and s.kind == Kind.TEXT for s in out)
    assert [s.index for s in out] == list(range(len(out)))
    for seg in out:
        assert words_counter(seg.data) <= MAX_TOKENS
        assert text[seg.extra["char_start"]:seg.extra["char_end"]] == seg.data
        assert seg.start_s is None
    first, second = out[0].data.split(), out[1].data.split()
    overlap = decode_settings.text_overlap_tokens
    assert first[-overlap:] == second[:overlap]
    assert out[-1].data.endswith("word399")
    covered = set().union(*(s.data.split() for s in out))
    assert len(covered) == 400


def test_default_estimate_is_pessimistic_and_chunks_fit(tmp_path, decode_settings):
    assert estimate_tokens("hello world") >= 2
    assert estimate_tokens("2024") == 4  # CLIP's BPE splits digits one by one
    path = tmp_path / "prose.md"
    path.write_text("The quick brown fox, 1234 times! " * 60)
    out = decode(path, decode_settings)
    assert len(out) > 1 and all(estimate_tokens(s.data) <= MAX_TOKENS for s in out)


def test_word_longer_than_the_budget_is_split():
    text = "x" * 1000
    chunks = chunk_text(text, len, overlap_tokens=0)
    assert "".join(c.text for c in chunks) == text
    assert all(len(c.text) <= MAX_TOKENS for c in chunks)


def test_encodings():
    assert read_text("héllo".encode())[1] == {"encoding": "utf-8"}
    text, extra = read_text("héllo wörld".encode("utf-16"))
    assert text == "héllo wörld" and extra["encoding"] == "utf-16"
    text, extra = read_text(("Größe und Maß, " * 20).encode("cp1252"))
    assert text.startswith("Größe") and extra["encoding"] != "utf-8"


def test_invalid_bytes_are_replaced_and_counted(tmp_path, decode_settings):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xff\xfe\xfa\x00\x81 still text")
    out = decode(path, decode_settings)
    assert out and not isinstance(out[0], Rejected)
    assert "ok" in out[0].data and "encoding" in out[0].extra


def test_empty_text_is_rejected(tmp_path, decode_settings):
    path = tmp_path / "empty.txt"
    path.write_text("  \n\t ")
    (rej,) = decode(path, decode_settings)
    assert isinstance(rej, Rejected) and "empty" in rej.reason


SRT = """1
00:00:01,000 --> 00:00:02,500
Hello <i>there</i>.

2
00:00:03,000 --> 00:00:04,000
General Kenobi!

3
00:01:00,000 --> 00:01:02,000
{\\an8}A later line
"""

VTT = """WEBVTT

00:01.000 --> 00:02.500 align:start
Hello there.

intro
00:00:03.000 --> 00:00:04.000
General Kenobi!
"""


@pytest.mark.parametrize(("name", "body"), [("a.srt", SRT), ("a.vtt", VTT)])
def test_subtitles_keep_cue_times(tmp_path, decode_settings, name, body):
    path = tmp_path / name
    path.write_text(body)
    out = decode(path, decode_settings, words_counter)
    assert out[0].data.startswith("Hello there. General Kenobi!")
    assert (out[0].start_s, out[0].end_s) == (1.0, out[0].extra["end_s"])
    assert out[0].extra["start_s"] == 1.0
    assert body[out[0].extra["char_start"]:].startswith("Hello")


def test_subtitle_cues_are_merged_up_to_the_budget(tmp_path, decode_settings):
    cues = parse_cues(SRT)
    assert [(c.start_s, c.end_s) for c in cues] == [(1.0, 2.5), (3.0, 4.0), (60.0, 62.0)]
    assert cues[2].text == "A later line"
    path = tmp_path / "tight.srt"
    path.write_text(SRT)
    out = decode(path, decode_settings, lambda t: 100 if len(t) > 20 else 1)  # one cue each
    assert [(s.start_s, s.end_s) for s in out] == [(1.0, 2.5), (3.0, 4.0), (60.0, 62.0)]


def test_subtitle_file_without_cues_is_rejected(tmp_path, decode_settings):
    path = tmp_path / "none.srt"
    path.write_text("just words\n")
    (rej,) = decode(path, decode_settings)
    assert isinstance(rej, Rejected) and "no cues" in rej.reason
