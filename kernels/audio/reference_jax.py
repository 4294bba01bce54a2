"""jax.numpy log_mel reference (rfft) and the XLA matmul peer.

    log_mel_reference(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None)
    log_mel_xla(...)  # same signature: frames @ [cos | sin] tables, the tensor-core formulation

Contract in ``spec.py``. Both return float32 (float64 for float64 input). The reference
computes in float32 (jnp.fft on 16-bit input upcasts); the XLA peer multiplies in the
waveform's dtype with float32 accumulation (HIGHEST precision for float32).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from .spec import LOG_FLOOR, dft_tables, geometry, hann_window, mel_filterbank


def _out_dtype(x):
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def frame(waveform, win: int, hop: int, frames: int):
    """[B, S] -> [B, frames, win] overlapping frames (a gather)."""
    idx = np.arange(frames)[:, None] * hop + np.arange(win)[None, :]
    return waveform[:, idx]


def log_mel_reference(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None):
    p = geometry(waveform.shape[-1], waveform.shape[0], sample_rate=sample_rate, n_mels=n_mels,
                 win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft)
    dt = _out_dtype(waveform)
    x = frame(waveform.astype(dt), p.win, p.hop, p.frames) * jnp.asarray(hann_window(p.win), dt)
    spec = jnp.fft.rfft(x, n=p.n_fft)
    power = spec.real ** 2 + spec.imag ** 2
    fb = jnp.asarray(mel_filterbank(p.n_freqs, n_mels, sample_rate), dt)
    mel = jnp.matmul(power, fb, precision=lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def log_mel_xla(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None):
    p = geometry(waveform.shape[-1], waveform.shape[0], sample_rate=sample_rate, n_mels=n_mels,
                 win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft)
    dt = _out_dtype(waveform)
    cos, sin = dft_tables(p.win, p.n_fft)
    tables = jnp.asarray(np.concatenate([cos, sin], axis=1), waveform.dtype)  # [win, 2 * n_freqs]
    prec = lax.Precision.HIGHEST if waveform.dtype in (jnp.float32, jnp.float64) else None
    x = frame(waveform, p.win, p.hop, p.frames)
    reim = jnp.einsum("btw,wf->btf", x, tables, precision=prec, preferred_element_type=dt)
    power = reim[..., : p.n_freqs] ** 2 + reim[..., p.n_freqs:] ** 2
    fb = jnp.asarray(mel_filterbank(p.n_freqs, n_mels, sample_rate), dt)
    mel = jnp.matmul(power, fb, precision=lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))
