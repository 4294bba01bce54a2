"""Fused linear cross-entropy for JAX (impls "pallas" and "xla"): Liger-Kernel's FLCE design,
as ``triton_cross_entropy.py`` does it for PyTorch (and MaxText's vocabulary tiling, tokamax's
linear-softmax cross-entropy do it for JAX).

    linear_cross_entropy_jax(x2 [N, W], weight [V, W], targets [N] int32, row_w [N] fp32, *,
                             softcap=None, impl="pallas", blocks=None, interpret=None) -> fp32 scalar

Rows go in chunks of ``chunk_rows`` (a ``lax.scan``): the chunk's logits [c, V] come from one
matmul in x's dtype with fp32 accumulation; the rows' softmax step (an online log-sum-exp,
then (softmax - onehot) * row_w, times the softcap's derivative) runs in a Pallas kernel
(impl="pallas": one program per block of rows stepping over masked vocabulary blocks, as
``_ce_kernel``; the gradient overwrites the logits' buffer) or as jnp ops XLA fuses
(impl="xla"); two more matmuls turn the gradient into the chunk's dx rows and add into an
fp32 dweight. Under differentiation the forward computes the gradients (``jax.custom_vjp``:
nothing [N, V] is kept, the logits are not recomputed) and the backward scales them by the
incoming cotangent; without it only the loss is computed.
Fast where: large vocabularies (256k): the peak is one chunk of logits and its gradient
(``chunk_bytes``, 256 MiB by default) instead of [N, V] fp32 logits, their log-softmax and
its gradient (~3 x 8.4 GB for nano1 at 8k tokens). Arguments arrive validated from
``kernels.jax_ops.linear_cross_entropy``. Limits: the Pallas kernel's offsets are 32-bit in
the Triton lowering (a chunk below 2^31 logits); interpret mode (no GPU) is slow, for tests.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default
from .spec import check_chunk_blocks

NEG = -1.0e30  # finite "minus infinity": exp(NEG - NEG) = 1, never NaN


@dataclasses.dataclass(frozen=True)
class JaxCrossEntropyBlocks:
    """block_r rows x block_v vocabulary columns per step of the Pallas kernel; chunk_rows rows
    of logits per scan step (0: as many as fit in chunk_bytes of fp32)."""

    block_r: int = 1
    block_v: int = 4096
    num_warps: int = 8
    chunk_rows: int = 0
    chunk_bytes: int = 1 << 28

    def __post_init__(self):
        for name in ("block_r", "block_v"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"{name}={v!r} must be a power of two >= 1")
        check_chunk_blocks(self)

    def rows(self, n: int, vocab: int) -> int:
        return max(1, min(n, self.chunk_rows or self.chunk_bytes // (vocab * 4)))


def default_blocks(vocab: int, *, interpret: bool) -> JaxCrossEntropyBlocks:
    """GPU: one row of 4096-column steps per program, 8 warps (as the Triton kernel).
    Interpreter: 8 rows of up to 8192 columns a step (fewer, larger numpy steps)."""
    if interpret:
        return JaxCrossEntropyBlocks(block_r=8, block_v=min(8192, pl.next_power_of_2(vocab)), num_warps=4)
    return JaxCrossEntropyBlocks()


def _capped(z, softcap):
    return z if softcap is None else softcap * jnp.tanh(z / softcap)


def _rows_kernel(z_ref, t_ref, w_ref, loss_ref, *g_ref, softcap, block_r, block_v):
    """Rows [pid * block_r, + block_r) of the chunk: loss_ref[r] = w_r * (lse_r - z_r[t_r]);
    with a gradient output, g_ref (the logits' own buffer) = w_r * (softmax - onehot) * capped'."""
    n_rows, vocab = z_ref.shape
    rows = pl.program_id(0) * block_r + jnp.arange(block_r)
    row_ok = rows < n_rows
    steps = pl.cdiv(vocab, block_v)

    def tile(j):
        cols = j * block_v + jnp.arange(block_v)
        mask = row_ok[:, None] & (cols < vocab)[None, :]
        z = plgpu.load(z_ref.at[rows[:, None], cols[None, :]], mask=mask, other=0.0)
        return cols, mask, _capped(z, softcap)

    def stats(j, carry):  # per-lane running max and sum: no cross-lane reduction per step
        m_i, s_i = carry
        _, mask, z = tile(j)
        z = jnp.where(mask, z, NEG)
        m_new = jnp.maximum(m_i, z)
        return m_new, s_i * jnp.exp(m_i - m_new) + jnp.exp(z - m_new)

    init = (jnp.full((block_r, block_v), NEG, jnp.float32), jnp.zeros((block_r, block_v), jnp.float32))
    m_i, s_i = jax.lax.fori_loop(0, steps, stats, init)
    m = jnp.max(m_i, axis=1)
    lse = m + jnp.log(jnp.sum(s_i * jnp.exp(m_i - m[:, None]), axis=1))
    t = plgpu.load(t_ref.at[rows], mask=row_ok, other=0)
    w = plgpu.load(w_ref.at[rows], mask=row_ok, other=0.0)
    z_t = _capped(plgpu.load(z_ref.at[rows, t], mask=row_ok, other=0.0), softcap)
    plgpu.store(loss_ref.at[rows], w * (lse - z_t), mask=row_ok)
    if not g_ref:
        return

    def grad(j, carry):
        cols, mask, z = tile(j)
        g = jnp.exp(z - lse[:, None]) - jnp.where(cols[None, :] == t[:, None], 1.0, 0.0)
        if softcap is not None:
            g = g * (1.0 - (z / softcap) * (z / softcap))  # d cap*tanh(u/cap) / du
        plgpu.store(g_ref[0].at[rows[:, None], cols[None, :]], w[:, None] * g, mask=mask)
        return carry

    jax.lax.fori_loop(0, steps, grad, 0)


def _rows_pallas(z, t, w, *, softcap, blocks, interpret, write_grad):
    """(loss rows [c], gradient [c, V] fp32 in z's buffer, or None) of one chunk."""
    c = z.shape[0]
    out_shape = [jax.ShapeDtypeStruct((c,), jnp.float32)]
    out_shape += [jax.ShapeDtypeStruct(z.shape, jnp.float32)] if write_grad else []
    kernel = functools.partial(_rows_kernel, softcap=softcap, block_r=blocks.block_r, block_v=blocks.block_v)
    outs = pl.pallas_call(
        kernel, grid=(pl.cdiv(c, blocks.block_r),), out_shape=out_shape,
        # the gradient overwrites the logits (Liger's in-place step): no second [c, V] buffer
        input_output_aliases={0: 1} if write_grad else {},
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=1),
        interpret=interpret, name="linear_cross_entropy_rows",
    )(z, t, w)
    return outs[0], (outs[1] if write_grad else None)


def _rows_xla(z, t, w, *, softcap, write_grad):
    zc = _capped(z, softcap)
    lse = jax.nn.logsumexp(zc, axis=-1)
    loss = w * (lse - jnp.take_along_axis(zc, t[:, None], axis=-1)[:, 0])
    if not write_grad:
        return loss, None
    g = jnp.exp(zc - lse[:, None]) - jax.nn.one_hot(t, z.shape[1], dtype=z.dtype)
    if softcap is not None:
        g = g * (1.0 - (zc / softcap) ** 2)
    return loss, w[:, None] * g


@dataclasses.dataclass(frozen=True)
class _Config:
    softcap: float | None
    impl: str
    blocks: JaxCrossEntropyBlocks
    interpret: bool


def _scan(x2, weight, t, w, cfg: _Config, *, grads: bool):
    """Loss (and dx [N, W], dweight fp32 [V, W] when ``grads``) over row chunks."""
    n, width = x2.shape
    vocab = weight.shape[0]
    c = cfg.blocks.rows(n, vocab)
    chunks = -(-n // c)
    pad = chunks * c - n  # padded rows: target 0, weight 0, so they add nothing
    xs = jnp.pad(x2, ((0, pad), (0, 0))).reshape(chunks, c, width)
    ts = jnp.pad(t, (0, pad)).reshape(chunks, c)
    ws = jnp.pad(w, (0, pad)).reshape(chunks, c)

    def step(dw, chunk):
        xc, tc, wc = chunk
        z = jnp.einsum("cw,vw->cv", xc, weight, preferred_element_type=jnp.float32)
        if cfg.impl == "pallas":
            loss, g = _rows_pallas(z, tc, wc, softcap=cfg.softcap, blocks=cfg.blocks,
                                   interpret=cfg.interpret, write_grad=grads)
        else:
            loss, g = _rows_xla(z, tc, wc, softcap=cfg.softcap, write_grad=grads)
        if not grads:
            return dw, (loss.sum(), None)
        g16 = g.astype(x2.dtype)  # the two matmuls in the inputs' dtype, fp32 accumulation
        dx = jnp.einsum("cv,vw->cw", g16, weight, preferred_element_type=jnp.float32).astype(x2.dtype)
        dw = dw + jnp.einsum("cv,cw->vw", g16, xc, preferred_element_type=jnp.float32)
        return dw, (loss.sum(), dx)

    dw0 = jnp.zeros((vocab, width), jnp.float32) if grads else None
    dw, (losses, dx) = jax.lax.scan(step, dw0, (xs, ts, ws))
    loss = losses.sum()
    if not grads:
        return loss
    return loss, dx.reshape(chunks * c, width)[:n], dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flce(x2, weight, t, w, cfg):
    return _scan(x2, weight, t, w, cfg, grads=False)


def _flce_fwd(x2, weight, t, w, cfg):
    loss, dx, dw = _scan(x2, weight, t, w, cfg, grads=True)
    return loss, (dx, dw.astype(weight.dtype), t, w)


def _flce_bwd(cfg, res, g):
    dx, dw, t, w = res
    return ((g * dx.astype(jnp.float32)).astype(dx.dtype), (g * dw.astype(jnp.float32)).astype(dw.dtype),
            None, jnp.zeros_like(w))  # targets: integer; row weights: not differentiated


_flce.defvjp(_flce_fwd, _flce_bwd)
_flce_jit = jax.jit(_flce, static_argnums=(4,))


def linear_cross_entropy_jax(x2, weight, targets, row_w, *, softcap=None, impl="pallas",
                             blocks: JaxCrossEntropyBlocks | None = None, interpret: bool | None = None):
    """Sum over rows of row_w * nll (see the module docstring) on validated arguments."""
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(weight.shape[0], interpret=interpret)
    cfg = _Config(softcap=None if softcap is None else float(softcap), impl=impl, blocks=blocks,
                  interpret=bool(interpret))
    return _flce_jit(x2, weight, targets.astype(jnp.int32), row_w.astype(jnp.float32), cfg)
