"""Text files → chunks that fit ImageBind's text context, with character offsets.

* Budget: 77 CLIP tokens minus SOT and EOT = ``MAX_TOKENS`` (75) BPE tokens per
  chunk; consecutive chunks overlap by ``settings.text_overlap_tokens`` tokens so
  a phrase cut at a boundary is whole in one of them.
* Token counting: ``decode_item(..., count_tokens=...)``. ingest may not import
  embed_workers, so the pipeline passes the real BPE counter
  (``len(embed_workers.model.tokenizer.encode(text))``). Without one,
  :func:`estimate_tokens` is used: a deliberately pessimistic guess (a letter run
  costs one token per 3 letters, every digit and every punctuation mark one), so
  chunks come out smaller than needed rather than truncated by the tokenizer.
* Chunks are word-aligned slices of the file's text: ``data ==
  text[char_start:char_end]``; a "word" longer than the budget is cut by
  characters.
* Encoding: a BOM decides; else strict UTF-8; else charset-normalizer's guess;
  else UTF-8 with U+FFFD replacements, counted in ``extra["replaced_chars"]``
  (``extra["encoding"]`` says which was used).
* Subtitles (``.srt``, ``.vtt``): cues are parsed with their times, markup
  (``<i>``, ``{\\an8}``) removed, and consecutive cues merged up to the budget
  (no overlap: cues are the natural unit). A chunk's ``start_s``/``end_s`` are
  its first cue's start and last cue's end; ``char_start``/``char_end`` point at
  the cue text in the file, and ``data`` is the cue texts joined by spaces.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ingest.decode.base import DecodeError, DecodeJob, TokenCounter
from schemas import Modality, Segment

MAX_TOKENS = 75  # 77-token context minus start-of-text and end-of-text
_ESTIMATE_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
_WORDS = re.compile(r"\S+")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def estimate_tokens(text: str) -> int:
    """A pessimistic CLIP-BPE token count when the real tokenizer is not at hand."""
    pieces = _ESTIMATE_PIECES.findall(text)
    return sum(math.ceil(len(p) / 3) if p[0].isalpha() else 1 for p in pieces)


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    char_start: int
    char_end: int
    start_s: float | None = None
    end_s: float | None = None


def decode_text(job: DecodeJob) -> Iterator[Segment]:
    text, extra = read_text(job.path.read_bytes())
    if not text.strip():
        raise DecodeError("text file is empty (no non-space characters)")
    count = job.count_tokens or estimate_tokens
    parse = SUBTITLE_PARSERS.get(job.path.suffix.lower())
    overlap = job.settings.text_overlap_tokens
    chunks = subtitle_chunks(parse(text), count) if parse else chunk_text(text, count, overlap)
    for index, c in enumerate(chunks):
        times = {"start_s": c.start_s, "end_s": c.end_s} if c.start_s is not None else {}
        yield Segment(job.item.item_id, Modality.TEXT, job.item.kind, index, c.start_s, c.end_s,
                      c.text, {"char_start": c.char_start, "char_end": c.char_end, **times,
                               **extra})


def read_text(raw: bytes) -> tuple[str, dict]:
    """Decode bytes to str, saying which encoding was used and what was replaced."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return raw.decode(encoding, "replace"), {"encoding": encoding}
    try:
        return raw.decode("utf-8"), {"encoding": "utf-8"}
    except UnicodeDecodeError:
        pass
    guess = _guess_encoding(raw)
    if guess:
        return raw.decode(guess, "replace"), {"encoding": guess}
    text = raw.decode("utf-8", "replace")
    return text, {"encoding": "utf-8", "replaced_chars": text.count("\ufffd")}


def _guess_encoding(raw: bytes) -> str | None:
    from charset_normalizer import from_bytes  # import cost only for non-UTF-8 files

    best = from_bytes(raw[: 1 << 20]).best()
    return best.encoding if best is not None else None


def chunk_text(text: str, count: TokenCounter, overlap_tokens: int,
               max_tokens: int = MAX_TOKENS) -> list[Chunk]:
    """Word-aligned chunks of at most ``max_tokens`` that overlap by ~``overlap_tokens``."""
    units = word_units(text, count, max_tokens)
    costs = [count(text[a:b]) for a, b in units]
    chunks, i = [], 0
    while i < len(units):
        j = _fill(costs, i, max_tokens)
        while j > i + 1 and count(text[units[i][0]:units[j - 1][1]]) > max_tokens:
            j -= 1  # the counter saw context across words: shrink until it fits
        a, b = units[i][0], units[j - 1][1]
        chunks.append(Chunk(text[a:b], a, b))
        if j >= len(units):
            break
        i = _overlap_start(costs, i, j, overlap_tokens)
    return chunks


def _fill(costs: list[int], i: int, budget: int) -> int:
    j, total = i, 0
    while j < len(costs) and (j == i or total + costs[j] <= budget):
        total += costs[j]
        j += 1
    return j


def _overlap_start(costs: list[int], i: int, j: int, overlap: int) -> int:
    """The first unit of the next chunk: go back from ``j`` while within ``overlap``."""
    k, total = j, 0
    while k - 1 > i and total + costs[k - 1] <= overlap:
        total += costs[k - 1]
        k -= 1
    return k


def word_units(text: str, count: TokenCounter, max_tokens: int) -> list[tuple[int, int]]:
    """(start, end) of each word; words over the budget are cut into fitting pieces."""
    units = []
    for m in _WORDS.finditer(text):
        units.extend(_split_long(text, m.start(), m.end(), count, max_tokens))
    return units


def _split_long(text: str, a: int, b: int, count: TokenCounter, limit: int
                ) -> list[tuple[int, int]]:
    if b - a <= 1 or count(text[a:b]) <= limit:
        return [(a, b)]
    mid = (a + b) // 2
    return _split_long(text, a, mid, count, limit) + _split_long(text, mid, b, count, limit)


# --- subtitles -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Cue:
    start_s: float
    end_s: float
    text: str
    char_start: int
    char_end: int


_TIMING = re.compile(r"^[ \t]*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})[ \t]*-->[ \t]*"
                     r"((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})[^\n]*$", re.MULTILINE)
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def parse_cues(text: str) -> list[Cue]:
    """SRT and WebVTT cues: a timing line, then text lines up to a blank line."""
    cues = []
    for m in _TIMING.finditer(text):
        body_start = m.end() + 1
        blank = re.search(r"\n[ \t]*\n", text[body_start:] + "\n\n")
        body_end = min(body_start + blank.start(), len(text))
        body = _MARKUP.sub("", text[body_start:body_end])
        clean = " ".join(body.split())
        if clean:
            cues.append(Cue(_seconds(m[1]), _seconds(m[2]), clean, body_start, body_end))
    if not cues:
        raise DecodeError("subtitle file has no cues (no 'start --> end' timing lines)")
    return cues


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(p) * 60**k for k, p in enumerate(reversed(parts)))


def subtitle_chunks(cues: list[Cue], count: TokenCounter,
                    max_tokens: int = MAX_TOKENS) -> list[Chunk]:
    """Consecutive cues merged up to the budget; a cue over budget is split by words."""
    chunks: list[Chunk] = []
    group: list[Cue] = []
    for cue in cues:
        if group and count(" ".join(c.text for c in [*group, cue])) > max_tokens:
            chunks.append(_merge(group))
            group = []
        if count(cue.text) > max_tokens:
            chunks.extend(_split_cue(cue, count, max_tokens))
        else:
            group.append(cue)
    return chunks + ([_merge(group)] if group else [])


def _merge(group: list[Cue]) -> Chunk:
    return Chunk(" ".join(c.text for c in group), group[0].char_start, group[-1].char_end,
                 group[0].start_s, group[-1].end_s)


def _split_cue(cue: Cue, count: TokenCounter, max_tokens: int) -> list[Chunk]:
    pieces = chunk_text(cue.text, count, 0, max_tokens)
    return [Chunk(p.text, cue.char_start, cue.char_end, cue.start_s, cue.end_s) for p in pieces]


SUBTITLE_PARSERS: dict[str, Callable[[str], list[Cue]]] = {".srt": parse_cues, ".vtt": parse_cues}
