"""patch_embed in JAX Pallas (GPU/Triton lowering): fused forward, dimages and dweight kernels.

Computes tokens = unfold(images) @ weight + bias + pos_embed (contract in ``spec.py``)
without an unfolded tensor. Channels-last images [B, H, W, C] are *viewed* (free reshape)
as [B, H, gw, P*C]: pixel row y = gh * P + ph of patch column gw is the contiguous run
[P*C] that meets weight rows ph * P*C ... (ph + 1) * P*C - 1. So for one patch row gh,
    tokens[b, gh] = sum_ph  X[b, gh * P + ph] [gw, P*C]  @  W[ph] [P*C, D]
and a program (image b, patch row gh, dim tile j) runs P small matmuls over P pixel rows.
Backward: dX[b, gh * P + ph] = dY[b, gh] @ W[ph]^T and dW[ph] = sum_{b, gh} X[...]^T dY[b, gh]
in Pallas; dbias and dpos are batch/patch sums of dY in jnp.
Limits: Triton lowering needs power-of-two tiles, so the view is zero-padded to gw_p =
max(16, 2^ceil(log2 gw)) columns and P*C to a power of two (a copy of the image when the
sizes are not already powers of two; 224 px / 16 px patches, C = 3: gw 14 -> 16, 48 -> 64).
fp32 dots at HIGHEST precision; bf16/fp16 with fp32 accumulation. Fast where: on GPU for
large batches; in interpret mode (no GPU) it is a slow, exact emulation for tests.
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
class PallasPatchBlocks:
    """Dim tile of the forward and dweight kernels, and Triton launch knobs."""

    block_d: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if not isinstance(self.block_d, int) or self.block_d < 16 or self.block_d & (self.block_d - 1):
            raise ValueError(f"block_d must be a power of two >= 16, got {self.block_d!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")


def default_blocks(*, interpret: bool) -> PallasPatchBlocks:
    return PallasPatchBlocks(256, 4, 1) if interpret else PallasPatchBlocks(64, 4, 2)


@dataclasses.dataclass(frozen=True)
class _Config:
    patch: int
    blocks: PallasPatchBlocks
    interpret: bool


def _p2(n: int) -> int:
    return max(16, pl.next_power_of_2(n))


def _pad(x, sizes):
    pads = [(0, s - d) for d, s in zip(x.shape, sizes)]
    return x if all(p == (0, 0) for p in pads) else jnp.pad(x, pads)


def _dot(a, b, dims):
    prec = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (dims, ((), ())), precision=prec, preferred_element_type=jnp.float32)


def _fwd_kernel(x_ref, w_ref, b_ref, pos_ref, o_ref, *, patch):
    # x_ref [P, gw_p, PC_p] pixel rows of one patch row; w_ref [P, PC_p, bd]; o_ref [gw_p, bd]
    def body(ph, acc):
        return acc + _dot(x_ref[ph], w_ref[ph], ((1,), (0,)))

    acc = lax.fori_loop(0, patch, body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = (acc + b_ref[...].astype(jnp.float32)[None, :]
                  + pos_ref[...].astype(jnp.float32)).astype(o_ref.dtype)


def _dimages_kernel(dy_ref, w_ref, dx_ref, *, patch, bd):
    # dy_ref [gw_p, D_p]; w_ref [P, PC_p, D_p]; dx_ref [P, gw_p, PC_p]. D_p is a multiple of bd
    # but not always a power of two (1152): reduce over power-of-two chunks of bd.
    def row(ph):
        def chunk(j, acc):
            d = pl.ds(pl.multiple_of(j * bd, bd), bd)
            return acc + _dot(dy_ref[:, d], w_ref[ph, :, d], ((1,), (1,)))

        acc = lax.fori_loop(0, dy_ref.shape[-1] // bd, chunk, jnp.zeros(dx_ref.shape[1:], jnp.float32))
        dx_ref[ph] = acc.astype(dx_ref.dtype)

    for ph in range(patch):  # static: P stores of independent rows
        row(ph)


def _dweight_kernel(x_ref, dy_ref, dw_ref, *, patch, grid_h):
    # x_ref [B, H, gw_p, PC_p] (whole); dy_ref [B, gh, gw_p, bd]; dw_ref [PC_p, bd] for row ph
    ph = pl.program_id(0)
    batch = x_ref.shape[0]

    def image(b, acc):
        def patch_row(gh, acc):
            return acc + _dot(x_ref[b, gh * patch + ph], dy_ref[b, gh], ((0,), (0,)))

        return lax.fori_loop(0, grid_h, patch_row, acc)

    acc = lax.fori_loop(0, batch, image, jnp.zeros(dw_ref.shape, jnp.float32))
    dw_ref[...] = acc.astype(dw_ref.dtype)


def _layout(images, weight, cfg: _Config):
    """Padded views: x [B, H, gw_p, PC_p], w [P, PC_p, D_p] and the sizes."""
    b, h, w, c = images.shape
    p, dim = cfg.patch, weight.shape[1]
    gh, gw, pc = h // p, w // p, p * c
    gw_p, pc_p = _p2(gw), _p2(pc)
    bd = min(cfg.blocks.block_d, _p2(dim))
    d_p = pl.cdiv(dim, bd) * bd
    x = _pad(images.reshape(b, h, gw, pc), (b, h, gw_p, pc_p))
    wv = _pad(weight.reshape(p, pc, dim), (p, pc_p, d_p))
    return x, wv, (b, h, w, c, gh, gw, pc, dim, gw_p, pc_p, bd, d_p)


def _params(cfg):
    return plgpu.CompilerParams(num_warps=cfg.blocks.num_warps, num_stages=cfg.blocks.num_stages)


def _forward(images, weight, bias, pos, cfg: _Config):
    x, wv, (b, h, w, c, gh, gw, pc, dim, gw_p, pc_p, bd, d_p) = _layout(images, weight, cfg)
    p = cfg.patch
    bias_p = _pad(bias, (d_p,))
    pos_p = _pad(pos.reshape(gh, gw, dim), (gh, gw_p, d_p))
    out = pl.pallas_call(
        functools.partial(_fwd_kernel, patch=p),
        grid=(b, gh, d_p // bd),
        in_specs=[pl.BlockSpec((None, p, gw_p, pc_p), lambda n, i, j: (n, i, 0, 0)),
                  pl.BlockSpec((p, pc_p, bd), lambda n, i, j: (0, 0, j)),
                  pl.BlockSpec((bd,), lambda n, i, j: (j,)),
                  pl.BlockSpec((None, gw_p, bd), lambda n, i, j: (i, 0, j))],
        out_specs=pl.BlockSpec((None, None, gw_p, bd), lambda n, i, j: (n, i, 0, j)),
        out_shape=jax.ShapeDtypeStruct((b, gh, gw_p, d_p), images.dtype),
        compiler_params=_params(cfg), interpret=cfg.interpret, name="patch_embed_fwd",
    )(x, wv, bias_p, pos_p)
    return out[:, :, :gw, :dim].reshape(b, gh * gw, dim)


def _backward(images, weight, dy, cfg: _Config):
    x, wv, (b, h, w, c, gh, gw, pc, dim, gw_p, pc_p, bd, d_p) = _layout(images, weight, cfg)
    p = cfg.patch
    dy = dy.astype(images.dtype)
    dyp = _pad(dy.reshape(b, gh, gw, dim), (b, gh, gw_p, d_p))
    dxp = pl.pallas_call(
        functools.partial(_dimages_kernel, patch=p, bd=bd),
        grid=(b, gh),
        in_specs=[pl.BlockSpec((None, None, gw_p, d_p), lambda n, i: (n, i, 0, 0)),
                  pl.BlockSpec((p, pc_p, d_p), lambda n, i: (0, 0, 0))],
        out_specs=pl.BlockSpec((None, p, gw_p, pc_p), lambda n, i: (n, i, 0, 0)),
        out_shape=jax.ShapeDtypeStruct(x.shape, images.dtype),
        compiler_params=_params(cfg), interpret=cfg.interpret, name="patch_embed_dimages",
    )(dyp, wv)
    dwp = pl.pallas_call(
        functools.partial(_dweight_kernel, patch=p, grid_h=gh),
        grid=(p, d_p // bd),
        in_specs=[pl.BlockSpec(x.shape, lambda r, j: (0, 0, 0, 0)),
                  pl.BlockSpec((b, gh, gw_p, bd), lambda r, j: (0, 0, 0, j))],
        out_specs=pl.BlockSpec((None, pc_p, bd), lambda r, j: (r, 0, j)),
        out_shape=jax.ShapeDtypeStruct(wv.shape, weight.dtype),
        compiler_params=_params(cfg), interpret=cfg.interpret, name="patch_embed_dweight",
    )(x, dyp)
    dx = dxp[:, :, :gw, :pc].reshape(b, h, w, c)
    dw = dwp[:, :pc, :dim].reshape(p * pc, dim)
    dy32 = dy.astype(jnp.float32)
    dpos = dy32.sum(0)  # [N, D]
    return dx, dw, dpos.sum(0).astype(weight.dtype), dpos.astype(weight.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _patch_embed(images, weight, bias, pos, cfg):
    return _forward(images, weight, bias, pos, cfg)


def _fwd(images, weight, bias, pos, cfg):
    return _forward(images, weight, bias, pos, cfg), (images, weight)


def _bwd(cfg, res, dy):
    images, weight = res
    return _backward(images, weight, dy, cfg)


_patch_embed.defvjp(_fwd, _bwd)
_patch_embed_jit = jax.jit(_patch_embed, static_argnums=(4,))


def patch_embed_pallas(images, weight, bias, pos_embed, *, patch,
                       blocks: PallasPatchBlocks | None = None, interpret: bool | None = None):
    """Validated arguments (``kernels.jax_ops.patch_embed``) -> tokens [B, N, D].

    Differentiable in all four arrays. interpret=None interprets unless JAX runs on a GPU.
    """
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(interpret=interpret)
    cfg = _Config(patch=int(patch), blocks=blocks, interpret=bool(interpret))
    return _patch_embed_jit(images, weight, bias, pos_embed, cfg)
