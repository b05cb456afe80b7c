"""Our torch-only Kaldi fbank against torchaudio.compliance.kaldi.fbank (test-only)."""

from __future__ import annotations

import math

import pytest
import torch
from torchaudio.compliance import kaldi

from embed_workers.fbank import log_mel_fbank, mel_filters

RATE = 16000


def _reference(signal: torch.Tensor) -> torch.Tensor:
    """ImageBind's call (reference §4.3); the other options are Kaldi defaults."""
    return kaldi.fbank(signal[None], htk_compat=True, sample_frequency=RATE, use_energy=False,
                       window_type="hanning", num_mel_bins=128, dither=0.0,
                       frame_length=25, frame_shift=10)


def _signals() -> dict[str, torch.Tensor]:
    t = torch.arange(2 * RATE, dtype=torch.float32) / RATE
    noise = torch.randn(2 * RATE, generator=torch.Generator().manual_seed(0))
    return {
        "tone_440": 0.5 * torch.sin(2 * math.pi * 440 * t),
        "two_tones": 0.3 * torch.sin(2 * math.pi * 100 * t) + 0.2 * torch.sin(2 * math.pi * 7000 * t),
        "chirp": 0.4 * torch.sin(2 * math.pi * (50 + 2000 * t) * t),
        "noise": 0.1 * noise,
        "loud_noise": 1000.0 * noise,
        "silence": torch.zeros(2 * RATE),
        "dc_offset": torch.full((2 * RATE,), 0.25),
        "short_0_3s": 0.1 * noise[: int(0.3 * RATE)],
        "one_frame": noise[:400],
        "odd_length": 0.1 * noise[:12345],
    }


@pytest.mark.parametrize("name", list(_signals()))
def test_matches_torchaudio(name: str) -> None:
    signal = _signals()[name]
    ours, theirs = log_mel_fbank(signal), _reference(signal)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_two_second_window_gives_198_frames() -> None:
    assert log_mel_fbank(torch.randn(2 * RATE)).shape == (1 + (2 * RATE - 400) // 160, 128)


def test_silence_sits_at_the_log_epsilon_floor() -> None:
    out = log_mel_fbank(torch.zeros(RATE))
    assert torch.all(out == math.log(torch.finfo(torch.float32).eps))


def test_a_tone_peaks_in_the_band_that_holds_its_frequency() -> None:
    t = torch.arange(RATE, dtype=torch.float32) / RATE
    low, high = (log_mel_fbank(torch.sin(2 * math.pi * f * t)).mean(0).argmax() for f in (300, 5000))
    assert low < high


def test_filters_equal_kaldi_banks_and_leave_the_nyquist_bin_out() -> None:
    filters = mel_filters(128, 512, RATE)
    banks, _ = kaldi.get_mel_banks(128, 512, float(RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
    assert filters.shape == (128, 257)
    torch.testing.assert_close(filters[:, :-1], banks, rtol=0, atol=1e-7)
    assert not filters[:, -1].any()
    assert torch.all((filters >= 0) & (filters <= 1))


@pytest.mark.parametrize("bad", [torch.zeros(399), torch.zeros(2, 399), torch.tensor(1.0)])
def test_rejects_signals_shorter_than_one_frame(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="signals of at least 400 samples"):
        log_mel_fbank(bad)


def test_a_batch_of_signals_gives_each_signal_its_own_bank() -> None:
    """Rows of a batch are the banks of each row alone (the encoder's device runs batches)."""
    rng = torch.Generator().manual_seed(3)
    batch = 0.1 * torch.randn(3, 9000, generator=rng)
    together = log_mel_fbank(batch)
    assert together.shape == (3, log_mel_fbank(batch[0]).shape[0], 128)
    for row in range(3):
        torch.testing.assert_close(together[row], log_mel_fbank(batch[row]), rtol=0, atol=1e-5)
