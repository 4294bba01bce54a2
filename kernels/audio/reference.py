"""Plain-torch log_mel reference (float64-capable) and the torch.stft peer.

    log_mel_reference(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None)
    log_mel_stft(...)  # same signature

Contract in ``spec.py``. The reference frames with Tensor.unfold, windows, and takes
torch.fft.rfft(n=n_fft); it computes in the waveform's dtype for float32/float64 and in
float32 for 16-bit input (rfft has no CPU half path). The stft peer is what a torch user
writes: torch.stft(center=False) on the waveform padded by (n_fft - win) so its frames
line up with ours (torch.stft centers a short window inside n_fft).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import LOG_FLOOR, geometry, mel_filterbank


def _prepare(waveform, sample_rate, n_mels, win_ms, hop_ms, n_fft):
    p = geometry(waveform.shape[-1], waveform.shape[0], sample_rate=sample_rate, n_mels=n_mels,
                 win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft)
    x = waveform if waveform.dtype in (torch.float32, torch.float64) else waveform.float()
    fb = torch.tensor(mel_filterbank(p.n_freqs, n_mels, sample_rate), dtype=x.dtype, device=x.device)
    window = torch.hann_window(p.win, periodic=True, dtype=x.dtype, device=x.device)
    return p, x, fb, window


def log_mel_reference(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None):
    p, x, fb, window = _prepare(waveform, sample_rate, n_mels, win_ms, hop_ms, n_fft)
    frames = x.unfold(-1, p.win, p.hop) * window  # [B, T, win]
    spec = torch.fft.rfft(frames, n=p.n_fft)  # [B, T, n_freqs]
    power = spec.real.square() + spec.imag.square()
    return torch.log(torch.clamp_min(power @ fb, LOG_FLOOR))  # [B, T, n_mels]


def log_mel_stft(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None):
    p, x, fb, window = _prepare(waveform, sample_rate, n_mels, win_ms, hop_ms, n_fft)
    extra = p.n_fft - p.win
    x = F.pad(x, (extra // 2, extra - extra // 2))
    spec = torch.stft(x, p.n_fft, hop_length=p.hop, win_length=p.win, window=window,
                      center=False, return_complex=True)  # [B, n_freqs, T]
    power = spec.abs().square().transpose(1, 2)
    return torch.log(torch.clamp_min(power @ fb, LOG_FLOOR))
