"""CLIP byte-level BPE tokenizer, as ImageBind's text tower expects it.

Behaviour follows the reference (shared/reference/imagebind.md §2.7): text is
cleaned (ftfy, double HTML unescape, whitespace collapsed, lower-cased), split by
CLIP's pre-tokeniser regex, each piece is byte-encoded and merged with the first
48,894 merges of ``bpe_simple_vocab_16e6.txt.gz`` (vocab origin: VOCAB_NOTICE.md).
A sequence is ``[SOT] + bpe`` cut to 76 ids, then EOT, then zeros up to 77: EOT is
always present, because the text head pools at ``argmax(ids)`` (= EOT's position).

As in the reference, the literal strings ``<|startoftext|>`` and ``<|endoftext|>``
inside a text map to the special ids.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77
# Room for BPE ids in one sequence: the context minus SOT and EOT.
MAX_TEXT_TOKENS = CONTEXT_LENGTH - 2
NUM_MERGES = 49152 - 256 - 2  # the reference slices lines [1 : 49152-256-2+1]
SOT_TEXT, EOT_TEXT = "<|startoftext|>", "<|endoftext|>"
SOT_ID, EOT_ID = 49406, 49407
END_OF_WORD = "</w>"

_PRETOKENIZER = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class TokenSpan:
    """A whitespace-separated word of the original text and its BPE token count."""

    start: int
    end: int
    n_tokens: int


@dataclass(frozen=True, slots=True)
class _Vocab:
    ids: dict[str, int]
    ranks: dict[tuple[str, str], int]
    byte_symbols: tuple[str, ...]


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """One printable unicode character per byte value (GPT-2/CLIP convention).

    Printable Latin-1 bytes stand for themselves; the others (controls, space,
    soft hyphen, ...) are moved to code points 256, 257, ... in byte order.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    symbols: list[str] = []
    next_free = 256
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(next_free))
            next_free += 1
    return tuple(symbols)


def _vocab_order(byte_order: Sequence[str], merges: Sequence[tuple[str, str]]) -> list[str]:
    """Token strings in id order: bytes, bytes ending a word, merges, specials."""
    return [*byte_order, *(s + END_OF_WORD for s in byte_order),
            *(a + b for a, b in merges), SOT_TEXT, EOT_TEXT]


@lru_cache(maxsize=1)
def _vocab() -> _Vocab:
    lines = gzip.decompress(VOCAB_PATH.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = _byte_symbols()
    # Byte tokens get ids in code-point order: printable bytes, then the moved ones.
    byte_order = sorted(symbols, key=ord)
    ids = {token: i for i, token in enumerate(_vocab_order(byte_order, merges))}
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    return _Vocab(ids=ids, ranks=ranks, byte_symbols=symbols)


def clean_text(text: str) -> str:
    """ftfy, double HTML unescape, collapse whitespace, lower-case (reference order)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of ``pair``, scanning left to right."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


@lru_cache(maxsize=65536)
def _bpe_piece(piece: str) -> tuple[int, ...]:
    """Ids of one pre-tokenised piece: apply the lowest-ranked merge until none applies."""
    vocab = _vocab()
    if piece in (SOT_TEXT, EOT_TEXT):
        return (vocab.ids[piece],)
    encoded = "".join(vocab.byte_symbols[b] for b in piece.encode("utf-8"))
    symbols = [*encoded[:-1], encoded[-1] + END_OF_WORD]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False)}
        best = min(pairs, key=lambda p: vocab.ranks.get(p, NUM_MERGES))
        if best not in vocab.ranks:
            break
        symbols = _merge_pair(symbols, best)
    return tuple(vocab.ids[s] for s in symbols)


def encode(text: str) -> list[int]:
    """BPE ids of a text, without SOT/EOT and without truncation."""
    ids: list[int] = []
    for piece in _PRETOKENIZER.findall(clean_text(text)):
        ids.extend(_bpe_piece(piece))
    return ids


def count_tokens(text: str) -> int:
    """How many BPE ids ``text`` needs; a chunk fits one sequence if <= MAX_TEXT_TOKENS."""
    return len(encode(text))


def token_spans(text: str) -> list[TokenSpan]:
    """Each whitespace-separated word of ``text`` with its character offsets and BPE count.

    The pre-tokeniser never joins across whitespace, so the counts add up to
    ``count_tokens(text)`` except where ftfy repairs text across word
    boundaries (rare); a chunker should check the final chunk with count_tokens.
    """
    return [TokenSpan(m.start(), m.end(), count_tokens(m.group()))
            for m in regex.finditer(r"\S+", text)]


def to_sequence(ids: Sequence[int]) -> list[int]:
    """``[SOT] + ids`` cut to 76, then EOT, zero-padded to 77."""
    head = [SOT_ID, *ids][: CONTEXT_LENGTH - 1]
    return [*head, EOT_ID] + [0] * (CONTEXT_LENGTH - 1 - len(head))


def tokenize(texts: str | Sequence[str]) -> torch.Tensor:
    """LongTensor [N,77] of model-ready token ids (N = 1 for a single string)."""
    if isinstance(texts, str):
        texts = [texts]
    rows = [to_sequence(encode(t)) for t in texts]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), CONTEXT_LENGTH)


def decode(ids: Sequence[int]) -> str:
    """Text of BPE ids (specials and padding dropped); for debugging and tests."""
    vocab = _vocab()
    by_id = _id_to_token()
    to_byte = {s: b for b, s in enumerate(vocab.byte_symbols)}
    chars = "".join(by_id[i] for i in ids if i not in (0, SOT_ID, EOT_ID))
    chars = chars.replace(END_OF_WORD, vocab.byte_symbols[ord(" ")])
    raw = bytes(to_byte[c] for c in chars)
    return raw.decode("utf-8", errors="replace").strip()


@lru_cache(maxsize=1)
def _id_to_token() -> dict[int, str]:
    return {i: token for token, i in _vocab().ids.items()}
