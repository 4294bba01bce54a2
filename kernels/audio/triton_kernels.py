"""log_mel device code (Triton): one fused kernel from raw waveform to log-mel.

What it computes (contract in ``spec.py``): each program takes BLOCK_T frames (rows
b * frames + t, gathered straight from the waveform at t * hop, no framed copy), and for
each block of BLOCK_F frequencies runs the windowed DFT as two tensor-core matmuls
[BLOCK_T, win] @ [win, BLOCK_F] against precomputed cos/sin tables, squares to power,
and accumulates power @ mel_filterbank into [BLOCK_T, n_mels] fp32; then log(max(., 1e-10)).
The frequency axis is n_fft / 2 (a power of two): bin 0's zero imaginary column carries
the real Nyquist column (``spec.packed_dft_tables``), split out again in the first block.
Limits: n_fft a power of two >= 32; n_mels <= 256; waveform fp32 (ieee dots) or fp16/bf16
(tables in that dtype, fp32 accumulation, tf32 mel matmul); output float32. 64-bit offsets.
Where it is fast: long or batched audio on sm_80+ in fp16/bf16, where the DFT runs on
tensor cores; fp32 input runs its dots on FMA units. Frames are re-read once per BLOCK_F.
"""
from __future__ import annotations

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .spec import LOG_FLOOR

LOG_FLOOR_C = tl.constexpr(LOG_FLOOR)


@triton.jit
def _log_mel_kernel(
    X,  # [B, S] waveform, any strides
    RE, IM,  # [WIN, HALF] packed windowed DFT tables (waveform dtype), contiguous
    FB,  # [HALF + 1, N_MELS] fp32 mel filterbank, contiguous (row HALF: Nyquist)
    OUT,  # [B * FRAMES, N_MELS] fp32 log-mel, contiguous
    stride_xb, stride_xs,
    ROWS, FRAMES, HOP,  # ROWS = B * FRAMES
    WIN: tl.constexpr, HALF: tl.constexpr, N_MELS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_MEL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, MEL_PRECISION: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < ROWS
    b, t = offs_t // FRAMES, offs_t % FRAMES
    base = b.to(tl.int64) * stride_xb + (t * HOP).to(tl.int64) * stride_xs  # frame starts
    offs_mel = tl.arange(0, BLOCK_MEL)
    mel_ok = offs_mel < N_MELS
    mel = tl.zeros((BLOCK_T, BLOCK_MEL), dtype=tl.float32)
    for f0 in range(0, HALF, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        re = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        im = tl.zeros((BLOCK_T, BLOCK_F), dtype=tl.float32)
        for k0 in range(0, WIN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < WIN
            x = tl.load(X + base[:, None] + offs_k.to(tl.int64)[None, :] * stride_xs,
                        mask=t_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_T, BLOCK_K]
            tab = offs_k[:, None] * HALF + offs_f[None, :]
            re = tl.dot(x, tl.load(RE + tab, mask=k_ok[:, None], other=0.0), re,
                        input_precision=DOT_PRECISION)
            im = tl.dot(x, tl.load(IM + tab, mask=k_ok[:, None], other=0.0), im,
                        input_precision=DOT_PRECISION)
        first = offs_f[None, :] == 0  # bin 0: re is DC, im is the (real) Nyquist bin
        power = tl.where(first, re * re, re * re + im * im)
        fb = tl.load(FB + offs_f[:, None] * N_MELS + offs_mel[None, :], mask=mel_ok[None, :], other=0.0)
        mel = tl.dot(power, fb, mel, input_precision=MEL_PRECISION)
        if f0 == 0:
            nyq = tl.sum(tl.where(first, im, 0.0), 1)  # [BLOCK_T]
            fb_nyq = tl.load(FB + HALF * N_MELS + offs_mel, mask=mel_ok, other=0.0)
            mel += (nyq * nyq)[:, None] * fb_nyq[None, :]
    out = tl.log(tl.maximum(mel, LOG_FLOOR_C))
    tl.store(OUT + offs_t.to(tl.int64)[:, None] * N_MELS + offs_mel[None, :], out,
             mask=t_ok[:, None] & mel_ok[None, :])
