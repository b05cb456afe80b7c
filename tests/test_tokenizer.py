"""Our CLIP tokenizer against open_clip's (same vocab, MIT) and ImageBind's reference."""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from embed_workers.model import tokenizer as tok

TEXTS = [
    "a photo of a cat",
    "A Dog RUNNING on the beach!!!",
    "The crackle of a fire, 1,234 sparks; don't you'll they've I'm we'd it's",
    "café naïve résumé Ångström",
    "日本語のテキストと中文混合",
    "emoji 😀🔥👍🏽 and flags 🇫🇷",
    "mojibake: Ã©tÃ© and â€œquotesâ€\x9d",
    "HTML entities &amp; &lt;b&gt;bold&lt;/b&gt; &amp;amp; &#39;x&#39; &nbsp;nbsp",
    "   leading\t\ttabs and\n\nnewlines   ",
    "numbers 3.14159 and 2024-11-27",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(f"word{i} and more" for i in range(60)),  # far beyond 77 tokens
]


@pytest.fixture(scope="module")
def reference() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_open_clip(reference, text: str) -> None:
    assert tok.encode(text) == reference.encode(text)


def test_tokenize_matches_open_clip_on_batch() -> None:
    ours = tok.tokenize(TEXTS)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), 77)
    assert torch.equal(ours, open_clip.tokenize(TEXTS))


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_and_whitespace_give_sot_eot(text: str) -> None:
    ids = tok.tokenize(text)[0]
    assert ids[:2].tolist() == [tok.SOT_ID, tok.EOT_ID]
    assert not ids[2:].any()
    assert torch.equal(ids, open_clip.tokenize([text])[0])


def test_long_text_is_cut_and_keeps_eot() -> None:
    text = TEXTS[-1]
    assert tok.count_tokens(text) > 75
    ids = tok.tokenize(text)[0]
    assert ids[0] == tok.SOT_ID and ids[-1] == tok.EOT_ID
    assert ids[1:-1].tolist() == tok.encode(text)[:75]
    assert int(ids.argmax()) == 76  # the text head pools at argmax = EOT


def test_exactly_75_tokens_fill_the_context_without_padding() -> None:
    text = " ".join(["cat"] * 75)
    assert tok.count_tokens(text) == 75
    ids = tok.tokenize(text)[0].tolist()
    assert ids == [tok.SOT_ID] + tok.encode(text) + [tok.EOT_ID]


def test_decode_round_trips_clean_text() -> None:
    text = "café 日本 fire 🔥 sparks"
    assert tok.decode(tok.encode(text)) == text


def test_special_strings_map_to_special_ids_like_the_reference(reference_tokenizer) -> None:
    """ImageBind's tokenizer turns a literal <|endoftext|> into the EOT id; so do we."""
    text = "a photo <|endoftext|> of a <|startoftext|> dog"
    ours = tok.tokenize(text)[0]
    assert torch.equal(ours, reference_tokenizer(text))
    assert tok.EOT_ID in ours[1:4].tolist()


def test_matches_imagebind_reference(reference_tokenizer) -> None:
    for text in TEXTS:
        assert torch.equal(tok.tokenize(text)[0], reference_tokenizer(text)), text


def test_token_spans_cover_words_and_sum_to_the_count() -> None:
    text = "  Hello, wörld!  日本語\tfire🔥 "
    spans = tok.token_spans(text)
    assert [text[s.start : s.end] for s in spans] == ["Hello,", "wörld!", "日本語", "fire🔥"]
    assert sum(s.n_tokens for s in spans) == tok.count_tokens(text)
    assert all(s.n_tokens >= 1 for s in spans)


def test_vocab_file_is_the_documented_one() -> None:
    digest = hashlib.sha256(tok.VOCAB_PATH.read_bytes()).hexdigest()
    notice = tok.VOCAB_PATH.with_name("VOCAB_NOTICE.md").read_text()
    assert digest in notice
    assert len(tok._vocab().ids) == 49408


@pytest.fixture(scope="module")
def reference_tokenizer():
    """ImageBind's own SimpleTokenizer (test-only, CC BY-NC-SA), loaded without its package init."""
    import reference_imagebind as helper  # tests/ is on sys.path under pytest

    if "imagebind.models" not in sys.modules:  # the helper stubs the package only once
        if helper.reference_package_dir() is None:
            pytest.skip("reference package imagebind not installed")
        helper.import_reference_model()
    module = importlib.import_module("imagebind.models.multimodal_preprocessors")
    vocab = Path(module.__file__).parents[1] / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    return module.SimpleTokenizer(str(vocab))
