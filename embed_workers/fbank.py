"""Kaldi-compatible log-mel filter bank in plain torch (no torchaudio at run time).

Computes what ``torchaudio.compliance.kaldi.fbank`` computes for ImageBind's
settings (shared/reference/imagebind.md §4.3): 25 ms Hanning frames every 10 ms
with snip_edges, per-frame DC removal, pre-emphasis 0.97, 512-point power
spectrum, HTK-style triangular mel filters from 20 Hz to Nyquist, log with a
float epsilon floor; no dither, no energy term. Parity: tests/test_fbank.py.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0


def _mel(freq_hz: torch.Tensor | float) -> torch.Tensor | float:
    """HTK mel scale: 1127 ln(1 + f/700)."""
    if isinstance(freq_hz, torch.Tensor):
        return 1127.0 * torch.log(1.0 + freq_hz / 700.0)  # not log1p: match Kaldi/torchaudio bits
    return 1127.0 * math.log(1.0 + freq_hz / 700.0)


def _frame_geometry(sample_rate: int, frame_ms: float, shift_ms: float) -> tuple[int, int, int]:
    """(frame length, hop, FFT size) in samples; FFT size is the next power of two."""
    frame = int(sample_rate * frame_ms * 0.001)
    hop = int(sample_rate * shift_ms * 0.001)
    return frame, hop, 1 << (frame - 1).bit_length()


@lru_cache(maxsize=8)
def mel_filters(num_bins: int, fft_size: int, sample_rate: int) -> torch.Tensor:
    """[num_bins, fft_size//2 + 1] triangular filters, equally spaced in mel.

    Kaldi leaves the Nyquist bin out of the filters; its column is zero.
    """
    mel_low, mel_high = _mel(LOW_FREQ_HZ), _mel(sample_rate / 2.0)
    step = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + step * torch.arange(num_bins + 2, dtype=torch.float32)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_hz = (sample_rate / fft_size) * torch.arange(fft_size // 2, dtype=torch.float32)
    mel = _mel(bin_hz)[None, :]
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(weights, (0, 1))


def _frames(signal: torch.Tensor, frame: int, hop: int) -> torch.Tensor:
    """[..., num_frames, frame] windows that lie wholly inside the signal (snip_edges)."""
    return signal.unfold(-1, frame, hop)


def log_mel_fbank(
    signal: torch.Tensor,
    sample_rate: int = 16000,
    num_bins: int = 128,
    frame_ms: float = 25.0,
    shift_ms: float = 10.0,
) -> torch.Tensor:
    """[..., frames, num_bins] log mel energies of mono float signals [..., samples] with
    at least one full frame; a batch of equal-length signals is one call, on their device."""
    frame, hop, fft_size = _frame_geometry(sample_rate, frame_ms, shift_ms)
    if signal.ndim < 1 or signal.shape[-1] < frame:
        raise ValueError(f"fbank needs signals of at least {frame} samples, "
                         f"got shape {tuple(signal.shape)}")
    frames = _frames(signal.contiguous(), frame, hop)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # Pre-emphasis; the first sample of each frame uses itself as predecessor.
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - PREEMPHASIS * previous
    frames = frames * torch.hann_window(frame, periodic=False, dtype=signal.dtype,
                                        device=signal.device)
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2.0)
    filters = mel_filters(num_bins, fft_size, sample_rate).to(signal.device, signal.dtype)
    energies = power @ filters.T
    return energies.clamp_min(torch.finfo(signal.dtype).eps).log()
