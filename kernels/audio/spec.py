"""log_mel contract, argument checks, and the float64 numpy tables every impl shares.

    log_mel(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None)
        waveform [batch, samples] float  ->  [batch, frames, n_mels] float32 (float64 for
        float64 input in the references)

Definition (every impl, both frameworks):
  win = round(win_ms * sample_rate / 1000) samples (400), hop = round(hop_ms * ...) (160),
  n_fft = next power of two >= win (512) unless given (a power of two >= win, <= 8192).
  Framing: no centering, no padding: frames = 1 + (samples - win) // hop; frame t is
    samples [t * hop, t * hop + win); trailing samples that do not fill a frame are dropped.
  Window: periodic Hann, w[j] = 0.5 - 0.5 cos(2 pi j / win), j < win.
  Spectrum: X_t[f] = sum_j x[t * hop + j] w[j] exp(-2 pi i f j / n_fft), f = 0 .. n_fft / 2
    (the windowed frame zero-padded on the right to n_fft; torch.stft pads the window in
    the middle, which only changes the phase); power |X_t[f]|^2.
  Mel: HTK scale mel(f) = 2595 log10(1 + f / 700), f_min = 0, f_max = sample_rate / 2,
    triangular filters without area normalization -- torchaudio.functional.melscale_fbanks
    with its defaults (norm=None, mel_scale="htk"); built here in float64 numpy.
  Output: log(max(mel_energy, 1e-10)) (natural log; floor LOG_FLOOR, so silence -> -23.03).
Refused before any kernel runs: sample_rate other than 16000 (no resampling is offered),
empty audio or audio shorter than one window, dtypes other than fp16, bf16 or fp32 (fp64 too
in the references; the encoders cast fp64 audio to fp32 first), n_mels outside [1, 256].
NaN / inf: the front-ends refuse non-finite samples on the host (one device sync). Under
jax.jit the values are abstract and the check cannot run: the frames that contain a
non-finite sample are then unspecified (other frames are unaffected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

SAMPLE_RATE = 16000
LOG_FLOOR = 1e-10
MAX_N_MELS = 256
MAX_N_FFT = 8192


@dataclass(frozen=True)
class LogMelProblem:
    batch: int
    samples: int
    sample_rate: int
    n_mels: int
    win: int
    hop: int
    n_fft: int

    @property
    def frames(self) -> int:
        return 1 + (self.samples - self.win) // self.hop

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


def geometry(samples: int, batch: int = 1, *, sample_rate=SAMPLE_RATE, n_mels=80, win_ms=25.0,
             hop_ms=10.0, n_fft=None) -> LogMelProblem:
    """Window, hop and FFT sizes of a call (checked: positive sizes, power-of-two n_fft >= win)."""
    for name, v in (("win_ms", win_ms), ("hop_ms", hop_ms)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a number > 0, got {v!r}")
    win = int(round(win_ms * sample_rate / 1000))
    hop = int(round(hop_ms * sample_rate / 1000))
    if win < 16 or hop < 1:
        raise ValueError(f"win_ms={win_ms} and hop_ms={hop_ms} give win={win} and hop={hop} "
                         f"samples at {sample_rate} Hz; need win >= 16 and hop >= 1")
    if n_fft is None:
        n_fft = 1 << (win - 1).bit_length()
    elif isinstance(n_fft, bool) or not isinstance(n_fft, int) or n_fft & (n_fft - 1) or not win <= n_fft <= MAX_N_FFT:
        raise ValueError(f"n_fft must be a power of two in [win={win}, {MAX_N_FFT}] or None, got {n_fft!r}")
    if n_fft > MAX_N_FFT:
        raise ValueError(f"win={win} samples needs n_fft={n_fft} > {MAX_N_FFT}")
    if isinstance(n_mels, bool) or not isinstance(n_mels, int) or not 1 <= n_mels <= MAX_N_MELS:
        raise ValueError(f"n_mels must be an int in [1, {MAX_N_MELS}] (80 or 128 typical), got {n_mels!r}")
    return LogMelProblem(batch, samples, sample_rate, n_mels, win, hop, n_fft)


_SHORT_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


def dtype_words(dtypes: Sequence[Any]) -> str:
    """The accepted dtypes as words: (torch.float16, torch.bfloat16, torch.float32) ->
    "fp16, bf16 or fp32" (any framework's dtype objects; unknown names kept as printed)."""
    names = [_SHORT_DTYPE.get(str(t).replace("torch.", ""), str(t)) for t in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_log_mel_args(waveform: Any, *, sample_rate, n_mels, win_ms, hop_ms, n_fft,
                       dtypes: Sequence[Any]) -> LogMelProblem:
    """Validate shapes, dtype and parameters (values are checked by the front-ends)."""
    shape = getattr(waveform, "shape", None)
    if shape is None or not hasattr(waveform, "dtype"):
        raise TypeError(f"waveform must be an array or tensor, got {type(waveform).__name__}")
    if len(shape) != 2:
        raise ValueError(f"waveform must be 2-D [batch, samples], got shape {tuple(shape)}")
    if waveform.dtype not in dtypes:
        raise TypeError(f"waveform dtype must be {dtype_words(dtypes)}, got {waveform.dtype}")
    if isinstance(sample_rate, bool) or sample_rate != SAMPLE_RATE:
        raise ValueError(f"sample_rate must be {SAMPLE_RATE} (resample the audio first; "
                         f"resampling is not offered), got {sample_rate!r}")
    b, s = int(shape[0]), int(shape[1])
    if b < 1 or s < 1:
        raise ValueError(f"waveform is empty: shape {(b, s)}; need batch >= 1 and samples >= 1")
    p = geometry(s, b, sample_rate=SAMPLE_RATE, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft)
    if s < p.win:
        raise ValueError(f"waveform has {s} samples, fewer than one window of win={p.win} "
                         f"samples ({win_ms} ms at {SAMPLE_RATE} Hz); no frame can be formed")
    return p


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """[n_freqs, n_mels] float64 triangular HTK filters (torchaudio melscale_fbanks, norm=None).

    Bin f sits at f * (sample_rate // 2) / (n_freqs - 1) Hz; filter m rises linearly from
    corner m to corner m + 1 and falls to corner m + 2, with n_mels + 2 corners equally
    spaced in mel between f_min and f_max.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    corners = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(corners)  # [n_mels + 1]
    rel = corners[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -rel[:, :-2] / widths[:-1]
    up = rel[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(down, up))


def hann_window(win: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window(win, periodic=True)), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * math.pi * np.arange(win) / win)


def dft_tables(win: int, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [win, n_fft // 2 + 1] float64 with the Hann window folded in:
    Re X[f] = frame @ cos[:, f], Im X[f] = -(frame @ sin[:, f])."""
    j = np.arange(win)[:, None]
    f = np.arange(n_fft // 2 + 1)[None, :]
    angle = 2.0 * math.pi * ((j * f) % n_fft) / n_fft  # exact argument reduction
    w = hann_window(win)[:, None]
    return w * np.cos(angle), w * np.sin(angle)


def packed_dft_tables(win: int, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """(re, im) [win, n_fft // 2] float64: bins 0 .. n_fft/2 - 1, except that the imaginary
    column of bin 0 (always 0 for real input) carries the real Nyquist column, so the
    frequency axis is a power of two. Kernels square re[:, 0] for DC and im[:, 0] for Nyquist."""
    cos, sin = dft_tables(win, n_fft)
    half = n_fft // 2
    re, im = cos[:, :half].copy(), sin[:, :half].copy()
    im[:, 0] = cos[:, half]
    return re, im


def log_mel_bytes(p: LogMelProblem, itemsize: int) -> int:
    """Compulsory traffic: the waveform read once, the float32 output written once."""
    return p.batch * p.samples * itemsize + p.batch * p.frames * p.n_mels * 4


def log_mel_flops(p: LogMelProblem) -> float:
    """DFT as two matmuls over the window plus the mel matmul, per frame."""
    return 2.0 * p.batch * p.frames * (2 * p.win * (p.n_fft // 2 + 1) + p.n_freqs * p.n_mels)
