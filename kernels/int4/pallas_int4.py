"""int4 dequantizing matmul in JAX Pallas (GPU/Triton lowering): y = x @ dequant(W).T, split-K.

Program (i, j, s) computes output tile [BLOCK_M, BLOCK_N] over its share s of the K steps.
Per step it loads packed bytes [BLOCK_N, BLOCK_K / 2] (uint8, contiguous along K; layout in
``spec.py``), splits nibbles in registers (low = even k, high = odd k), dequantizes each half
with the step's one scale/zero row ((q - z) * s, cast to x's dtype: BLOCK_K divides
group_size) and runs two dots, x_even @ lo.T + x_odd @ hi.T, against x's even and odd
columns -- the nibble interleave is never undone, so no in-kernel reshape is needed. The
wrapper splits x into x[:, 0::2] and x[:, 1::2] (a copy of x, small next to W at decode).
The dequantized weight never exists in memory. Partials [S, M, N] fp32 are summed in jnp.
Limits: group_size a power of two >= 16 (BLOCK_K = min(block_k, group_size)); rows are
padded to BLOCK_M (a copy of x; no rows at all: an empty result, nothing launched); out is
read in place when some power of two >= 16 divides it, else W, scales and zeros are padded
(a copy: avoid such out sizes). fp32 dots at HIGHEST precision. Forward only. Fast where:
on GPU, decode rows with split-K; without a GPU it runs in Pallas interpret mode (slow; tests).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default


@dataclasses.dataclass(frozen=True)
class PallasInt4Blocks:
    """Output tile [block_m, block_n], K step block_k (<= group_size), split_k shares of K
    (0 = about two waves of programs on the GPU), Triton launch knobs."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 0
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v!r}")
        if not isinstance(self.split_k, int) or not 0 <= self.split_k <= 64:
            raise ValueError(f"split_k must be an int in [0, 64] (0 = auto), got {self.split_k!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")


def default_blocks(rows: int, *, interpret: bool) -> PallasInt4Blocks:
    if interpret:  # few, large numpy steps
        return PallasInt4Blocks(max(16, min(64, pl.next_power_of_2(rows))), 64, 128, 1, 4, 1)
    if rows <= 16:
        return PallasInt4Blocks(16, 64, 128, 0, 4, 3)
    if rows <= 64:
        return PallasInt4Blocks(64, 64, 128, 0, 4, 3)
    return PallasInt4Blocks(128, 128, 64, 1, 8, 3)


@dataclasses.dataclass(frozen=True)
class _Statics:
    group_size: int
    block_m: int
    block_n: int
    block_k: int
    splits: int
    k_steps_per_split: int
    blocks: PallasInt4Blocks
    interpret: bool


def _dot_t(a, b):  # a [M, K] @ b[N, K].T -> [M, N] fp32
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=prec,
                           preferred_element_type=jnp.float32)


def _kernel(xe_ref, xo_ref, qw_ref, s_ref, *rest, st: _Statics, has_zeros: bool):
    # xe_ref, xo_ref [BM, K/2] even/odd columns of x; qw_ref [BN, K/2] uint8;
    # s_ref (z_ref) [K/G, BN]; o_ref [BM, BN] fp32 partial of split s
    z_ref, o_ref = rest if has_zeros else (None, rest[0])
    half = st.block_k // 2
    kb = xe_ref.shape[1] // half  # K steps in all
    start = pl.program_id(2) * st.k_steps_per_split
    stop = jnp.minimum(start + st.k_steps_per_split, kb)
    dt = xe_ref.dtype

    def body(t, acc):
        sl = pl.ds(t * half, half)
        p = qw_ref[:, sl]  # [BN, half] uint8
        g = (t * st.block_k) // st.group_size
        s = s_ref[g, :].astype(jnp.float32)[:, None]  # [BN, 1]
        z = z_ref[g, :].astype(jnp.float32)[:, None] if has_zeros else 8.0
        lo = ((jnp.bitwise_and(p, 0xF).astype(jnp.float32) - z) * s).astype(dt)
        hi = ((lax.shift_right_logical(p, jnp.uint8(4)).astype(jnp.float32) - z) * s).astype(dt)
        return acc + _dot_t(xe_ref[:, sl], lo) + _dot_t(xo_ref[:, sl], hi)

    o_ref[...] = lax.fori_loop(start, stop, body, jnp.zeros(o_ref.shape, jnp.float32))


def _pad_to(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


@functools.partial(jax.jit, static_argnums=(4,))
def _int4_matmul(x2, packed_w, scales, zeros, st: _Statics):
    m, k = x2.shape
    n = packed_w.shape[0]
    bm, bn = st.block_m, st.block_n
    m_p, n_p = pl.cdiv(m, bm) * bm, pl.cdiv(n, bn) * bn
    xp = _pad_to(x2, 0, m_p)
    xe, xo = xp[:, 0::2], xp[:, 1::2]
    qw = _pad_to(packed_w, 0, n_p)
    sc = _pad_to(scales, 1, n_p)
    args = [xe, xo, qw, sc] + ([] if zeros is None else [_pad_to(zeros, 1, n_p)])
    groups = k // st.group_size
    x_spec = pl.BlockSpec((bm, k // 2), lambda i, j, s: (i, 0))
    g_spec = pl.BlockSpec((groups, bn), lambda i, j, s: (0, j))
    part = pl.pallas_call(
        functools.partial(_kernel, st=st, has_zeros=zeros is not None),
        grid=(m_p // bm, n_p // bn, st.splits),
        in_specs=[x_spec, x_spec, pl.BlockSpec((bn, k // 2), lambda i, j, s: (j, 0)), g_spec]
        + [g_spec] * (zeros is not None),
        out_specs=pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j)),
        out_shape=jax.ShapeDtypeStruct((st.splits, m_p, n_p), jnp.float32),
        compiler_params=plgpu.CompilerParams(num_warps=st.blocks.num_warps,
                                             num_stages=st.blocks.num_stages),
        interpret=st.interpret, name="int4_matmul",
    )(*args)
    return part.sum(0)[:m, :n].astype(x2.dtype)


def _block_n(n: int, want: int) -> int:
    """The largest power of two in [16, want] dividing n (W read in place), else ``want``."""
    bn = want
    while bn > 16 and n % bn:
        bn //= 2
    return bn if n % bn == 0 else want


def int4_matmul_pallas(x, packed_w, scales, zeros, group_size, *, blocks: PallasInt4Blocks | None = None,
                       interpret: bool | None = None):
    """x @ dequant(W).T on validated arguments (``kernels.jax_ops.int4_matmul``); forward only."""
    if interpret is None:
        interpret = pallas_interpret_default()
    k = x.shape[-1]
    n = packed_w.shape[0]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if m == 0:  # no rows: nothing to launch (a [0, ...] block would not fit the grid's tiles)
        return jnp.zeros((*x.shape[:-1], n), x.dtype)
    if blocks is None:
        blocks = default_blocks(m, interpret=interpret)
    bk = min(blocks.block_k, int(group_size))
    bn = _block_n(n, blocks.block_n)
    k_steps = k // bk
    splits = blocks.split_k
    if splits == 0:
        sms = 4 if interpret else (getattr(jax.devices()[0], "core_count", None) or 132)
        tiles = pl.cdiv(m, blocks.block_m) * pl.cdiv(n, bn)
        splits = max(1, min(pl.cdiv(2 * sms, tiles), k_steps // 2, 64))
    splits = max(1, min(splits, k_steps))
    per = pl.cdiv(k_steps, splits)
    st = _Statics(group_size=int(group_size), block_m=blocks.block_m, block_n=bn, block_k=bk,
                  splits=pl.cdiv(k_steps, per), k_steps_per_split=per, blocks=blocks,
                  interpret=bool(interpret))
    return _int4_matmul(x2, packed_w, scales, zeros, st).reshape(*x.shape[:-1], n)
