"""Log-mel spectrogram in JAX Pallas (GPU/Triton lowering), forward only.

    log_mel_pallas(waveform, problem, *, blocks=None, interpret=None)

Pallas blocks cannot overlap, so frames are not gathered: the waveform is laid out as rows
of hop samples, R[r] = x[r * hop : (r + 1) * hop], and frame t = R[t] ++ R[t + 1] ++ ...
(nchunk = ceil(win / hop) rows, the tail past win multiplied by zero table rows). The
windowed DFT of BLOCK_T frames is then sum_c R[t0 + c : t0 + c + BLOCK_T] @ table[c], a
few matmuls on row slices of one VMEM/SMEM-resident waveform row -- no framed copy. The
frequency axis uses the packed n_fft / 2 tables of ``spec.packed_dft_tables`` (bin 0 carries
DC in re and Nyquist in im); power @ mel filterbank accumulates in fp32; log(max(., 1e-10)).
Limits: Triton lowering needs power-of-two tiles, so each hop row is zero-padded to a power
of two (160 -> 256 samples: a 1.6x copy of the waveform) and n_mels to >= 16. fp32 dots at
HIGHEST precision, bf16/fp16 tables in the waveform's dtype with fp32 accumulation.
Output float32. Fast where: batched audio on GPU; interpret mode (no GPU) is for tests.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default
from .spec import LOG_FLOOR, LogMelProblem, mel_filterbank, packed_dft_tables


@dataclasses.dataclass(frozen=True)
class PallasLogMelBlocks:
    block_t: int = 64
    block_f: int = 64
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_t", "block_f"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")


def default_blocks(*, interpret: bool) -> PallasLogMelBlocks:
    return PallasLogMelBlocks(128, 256, 4, 1) if interpret else PallasLogMelBlocks(32, 64, 4, 1)


@dataclasses.dataclass(frozen=True)
class _Config:
    problem: LogMelProblem
    blocks: PallasLogMelBlocks
    interpret: bool


def _p2(n: int) -> int:
    return max(16, pl.next_power_of_2(n))


def _dot(a, b):
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=prec,
                           preferred_element_type=jnp.float32)


def _kernel(x_ref, re_ref, im_ref, fb_ref, nyq_ref, o_ref, *, nchunk, block_t, block_f):
    # x_ref [R_p, hop_p] one waveform in hop rows; re/im_ref [nchunk, hop_p, HALF];
    # fb_ref [HALF, M_p] fp32; nyq_ref [M_p] fp32 (Nyquist filter row); o_ref [block_t, M_p]
    t0 = pl.program_id(1) * block_t
    half = re_ref.shape[2]
    mel = jnp.zeros(o_ref.shape, jnp.float32)
    for f0 in range(0, half, block_f):  # static: half / block_f steps
        re = jnp.zeros((block_t, block_f), jnp.float32)
        im = jnp.zeros((block_t, block_f), jnp.float32)
        for c in range(nchunk):  # static: ceil(win / hop) steps
            rows = x_ref[pl.ds(t0 + c, block_t), :]  # [block_t, hop_p]
            re = re + _dot(rows, re_ref[c, :, pl.ds(f0, block_f)])
            im = im + _dot(rows, im_ref[c, :, pl.ds(f0, block_f)])
        power = re * re + im * im
        if f0 == 0:  # bin 0: re is DC, im is the real Nyquist bin
            first = lax.broadcasted_iota(jnp.int32, power.shape, 1) == 0
            power = jnp.where(first, re * re, power)
            nyq = jnp.sum(jnp.where(first, im, 0.0), axis=1)
            mel = mel + (nyq * nyq)[:, None] * nyq_ref[...][None, :]
        mel = mel + _dot(power, fb_ref[pl.ds(f0, block_f), :])
    o_ref[...] = jnp.log(jnp.maximum(mel, LOG_FLOOR))


@functools.lru_cache(maxsize=32)
def _tables(win: int, hop: int, n_fft: int, n_mels: int, sample_rate: int, hop_p: int, m_p: int):
    """numpy: chunked packed tables [nchunk, hop_p, HALF] (re, im), fb [HALF, M_p], nyq [M_p]."""
    re, im = packed_dft_tables(win, n_fft)
    nchunk = -(-win // hop)
    half = n_fft // 2

    def chunked(t):
        out = np.zeros((nchunk, hop_p, half))
        for c in range(nchunk):
            part = t[c * hop: min((c + 1) * hop, win)]
            out[c, : part.shape[0]] = part
        return out

    fb = np.zeros((half + 1, m_p))
    fb[:, :n_mels] = mel_filterbank(half + 1, n_mels, sample_rate)
    return chunked(re), chunked(im), fb[:half], fb[half]


@functools.partial(jax.jit, static_argnums=(1,))
def _log_mel(waveform, cfg: _Config):
    p, blk = cfg.problem, cfg.blocks
    nchunk = -(-p.win // p.hop)
    hop_p, m_p, half = _p2(p.hop), _p2(p.n_mels), p.n_fft // 2
    bt = min(blk.block_t, _p2(p.frames))
    bf = min(blk.block_f, half)
    t_p = pl.cdiv(p.frames, bt) * bt
    r_p = t_p + nchunk - 1  # hop rows any block of frames can touch
    x = waveform[:, : min(p.samples, r_p * p.hop)]
    x = jnp.pad(x, ((0, 0), (0, r_p * p.hop - x.shape[1]))).reshape(p.batch, r_p, p.hop)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, hop_p - p.hop)))  # [B, R_p, hop_p]
    re, im, fb, nyq = _tables(p.win, p.hop, p.n_fft, p.n_mels, p.sample_rate, hop_p, m_p)
    dt = waveform.dtype
    out = pl.pallas_call(
        functools.partial(_kernel, nchunk=nchunk, block_t=bt, block_f=bf),
        grid=(p.batch, t_p // bt),
        in_specs=[pl.BlockSpec((None, r_p, hop_p), lambda b, i: (b, 0, 0)),
                  pl.BlockSpec((nchunk, hop_p, half), lambda b, i: (0, 0, 0)),
                  pl.BlockSpec((nchunk, hop_p, half), lambda b, i: (0, 0, 0)),
                  pl.BlockSpec((half, m_p), lambda b, i: (0, 0)),
                  pl.BlockSpec((m_p,), lambda b, i: (0,))],
        out_specs=pl.BlockSpec((None, bt, m_p), lambda b, i: (b, i, 0)),
        out_shape=jax.ShapeDtypeStruct((p.batch, t_p, m_p), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=blk.num_warps, num_stages=blk.num_stages),
        interpret=cfg.interpret, name="log_mel",
    )(x, jnp.asarray(re, dt), jnp.asarray(im, dt), jnp.asarray(fb, jnp.float32),
      jnp.asarray(nyq, jnp.float32))
    return out[:, : p.frames, : p.n_mels]


def log_mel_pallas(waveform, problem: LogMelProblem, *, blocks: PallasLogMelBlocks | None = None,
                   interpret: bool | None = None):
    """Validated waveform [B, S] (``kernels.jax_ops.log_mel``) -> [B, frames, n_mels] float32."""
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(interpret=interpret)
    return _log_mel(waveform, _Config(problem, blocks, bool(interpret)))
