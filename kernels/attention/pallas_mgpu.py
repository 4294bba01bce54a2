"""MQA/GQA flash attention in Pallas Mosaic GPU (Hopper: TMA, mbarriers, wgmma), fwd + bwd.

    attention_pallas_mgpu(q, k, v, *, causal, window, softcap, scale, q_segment_ids,
                          kv_segment_ids, blocks=None, interpret=None)

Computes softmax(scale * q k^T [soft-capped, masked]) v for q [B, Sq, H, D] and
k, v [B, Skv, KVH, D] with the semantics of ``spec.py`` (bottom-right causal, sliding
window, softcap, rows that see no key return 0 and get zero gradients). The G = H / KVH
query heads of a kv group are folded into the rows of each q tile, so each K/V tile is
loaded once per group, and the backward sums dK/dV over the group inside its kernel.
Differentiable (custom_vjp): the forward saves its base-2 log-sum-exp; the backward is a
delta = rowsum(dO * O) preprocess in XLA, a dK/dV kernel and a dQ kernel.
Device code: ``pallas_mgpu_kernels.py`` (forward), ``pallas_mgpu_bwd_kernels.py``.

Limits: float16 / bfloat16 only (wgmma operands; float32 raises TypeError); no segment_ids
(ValueError; use impl="pallas"); head_dim padded to 64, 128 or 256, and <= 128 for
gradients (NotImplementedError: use impl="pallas"); any lengths (padded here to block
multiples). K is re-laid out to [B, KVH, D, Skv] (one copy of K per call); the backward
also copies Q^T, dO^T, K^T, V^T, because the interpret-mode subset the kernels keep to has
no transposed wgmma operands, and its Q/dO ring has at most 2 slots (smem).
Tested in Pallas's GPU interpret mode (a CPU simulation of smem, TMA and barriers; slow)
and lowered for CUDA sm_90 by jax.export; the compiled kernels' speed, registers and
spills on H100/H200 are unmeasured. Meant to be fast where: long MQA/GQA sequences.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .._platform import pallas_interpret_default
from .pallas_mgpu_bwd_kernels import dkv_kernel, dq_kernel
from .pallas_mgpu_kernels import MgpuTileStatics, fwd_kernel, smem_transforms

IMPL = "pallas_mgpu"
DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


@dataclasses.dataclass(frozen=True)
class MgpuAttentionBlocks:
    """Tile sizes: block_q counts folded rows (query x group head); num_stages K/V smem slots."""

    block_q: int = 64
    block_kv: int = 64
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_q", "block_kv"):
            b = getattr(self, name)
            if isinstance(b, bool) or not isinstance(b, int) or b < 64 or b % 64:
                raise ValueError(f"{name} must be a positive multiple of 64, got {b!r}")
        if self.block_q > 128:  # one warpgroup holds S [bq, bk] and O [bq, 128] in registers
            raise ValueError(f"block_q must be 64 or 128, got {self.block_q!r}")
        if self.block_kv > 128:
            raise ValueError(f"block_kv must be 64 or 128, got {self.block_kv!r}")
        if isinstance(self.num_stages, bool) or self.num_stages not in (1, 2, 3, 4):
            raise ValueError(f"num_stages must be an int in 1..4, got {self.num_stages!r}")


def default_blocks(head_dim: int) -> MgpuAttentionBlocks:
    """One warpgroup per CTA: 64 folded rows; deeper K/V ring when the tiles are small."""
    if head_dim <= 64:
        return MgpuAttentionBlocks(block_q=64, block_kv=128, num_stages=3)
    if head_dim <= 128:
        return MgpuAttentionBlocks(block_q=64, block_kv=64, num_stages=3)
    return MgpuAttentionBlocks(block_q=64, block_kv=64, num_stages=2)


def interpret_params():
    """Pallas's GPU interpret-mode parameters (public name if this JAX exports one).

    jax 0.10.2 has ``InterpretGPUParams`` only in jax._src.pallas.mosaic_gpu.interpret.
    """
    public = getattr(plgpu, "InterpretGPUParams", None)
    if public is not None:
        return public()
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: a jit / custom_vjp static argument)."""

    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    blocks: MgpuAttentionBlocks
    interpret: bool


def _pad_to(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


def _padded_head_dim(d: int) -> int:
    return 64 if d <= 64 else 128 if d <= 128 else 256


def _statics(q_shape, k_shape, cfg: _Config, *, num_stages: int) -> MgpuTileStatics:
    (sq, h, d), (skv, kvh) = q_shape[1:], k_shape[1:3]
    bq, bk, d_p = cfg.blocks.block_q, cfg.blocks.block_kv, _padded_head_dim(d)
    dc = min(d_p, 128)
    return MgpuTileStatics(q_len=sq, kv_len=skv, kv_len_padded=pl.cdiv(skv, bk) * bk,
                           group=h // kvh, block_q=bq, block_kv=bk, num_stages=num_stages,
                           d_chunk=dc, num_chunks=d_p // dc, causal=cfg.causal,
                           window=cfg.window, softcap=cfg.softcap, scale=cfg.scale,
                           layout_hints=not cfg.interpret)


def _fold(x, kvh: int, t: MgpuTileStatics):
    """[B, Sq, H, D] -> [B, KVH, rows_p, Dp], row r = s * G + g (zero padded)."""
    b, sq, h, d = x.shape
    xf = x.reshape(b, sq, kvh, h // kvh, d).transpose(0, 2, 1, 3, 4).reshape(b, kvh, sq * t.group, d)
    rows_p = pl.cdiv(t.rows, t.block_q) * t.block_q
    return _pad_to(_pad_to(xf, 2, rows_p), 3, t.d_chunk * t.num_chunks)


def _unfold(xf, shape):
    b, sq, h, d = shape
    kvh = xf.shape[1]
    xf = xf[:, :, : sq * (h // kvh), :d].reshape(b, kvh, sq, h // kvh, d)
    return xf.transpose(0, 2, 1, 3, 4).reshape(b, sq, h, d)


def _pad_kv(x, t: MgpuTileStatics):
    """[B, Skv, KVH, D] -> [B, Skv_p, KVH, Dp] (copies only when padding is needed)."""
    return _pad_to(_pad_to(x, 1, t.kv_len_padded), 3, t.d_chunk * t.num_chunks)


def _launch(kernel, t: MgpuTileStatics, cfg: _Config, *, out_type, scratch, grid, grid_names):
    extra = {"interpret": interpret_params()} if cfg.interpret else {}
    return plgpu.kernel(functools.partial(kernel, t=t), out_type=out_type,
                        scratch_types=scratch, grid=grid, grid_names=grid_names,
                        compiler_params=plgpu.CompilerParams(approx_math=True), **extra)


def _forward(q, k, v, cfg: _Config):
    """Fold / pad / transpose, launch: folded o [B, KVH, rows_p, Dp], lse [B, KVH, rows_p]."""
    kvh, dtype = k.shape[2], q.dtype
    t = _statics(q.shape, k.shape, cfg, num_stages=cfg.blocks.num_stages)
    bq, bk, nc, dc, st, xf = t.block_q, t.block_kv, t.num_chunks, t.d_chunk, t.num_stages, smem_transforms()
    qf = _fold(q, kvh, t)
    kt = _pad_kv(k, t).transpose(0, 2, 3, 1)  # [B, KVH, Dp, Skv_p]
    scratch = [
        plgpu.SMEM((nc, bq, dc), dtype, transforms=xf),  # Q, then O
        plgpu.SMEM((nc, st, dc, bk), dtype, transforms=xf),  # K^T ring
        plgpu.SMEM((nc, st, bk, dc), dtype, transforms=xf),  # V ring
        plgpu.SMEM((bq, bk), dtype, transforms=xf),  # P
        plgpu.SMEM((bq,), jnp.float32),  # log-sum-exp
        tuple(plgpu.Barrier() for _ in range(nc)),
        tuple(plgpu.Barrier(num_barriers=st) for _ in range(nc)),
        tuple(plgpu.Barrier(num_barriers=st) for _ in range(nc)),
    ]
    out_type = (jax.ShapeDtypeStruct(qf.shape, dtype), jax.ShapeDtypeStruct(qf.shape[:3], jnp.float32))
    return _launch(fwd_kernel, t, cfg, out_type=out_type, scratch=scratch,
                   grid=(qf.shape[2] // bq, kvh, q.shape[0]),
                   grid_names=("q_tile", "kv_head", "batch"))(qf, kt, _pad_kv(v, t))


def _backward(q, k, v, of, lse, do, cfg: _Config):
    """dq, dk, dv from the forward's folded o and lse: preprocess, dK/dV kernel, dQ kernel."""
    if q.shape[-1] > 128:
        raise NotImplementedError(
            f"impl={IMPL!r} backward supports head_dim <= 128, got {q.shape[-1]} (the fp32 dK "
            "and dV accumulators of one warpgroup would not fit in registers); use impl='pallas'")
    kvh, dtype, xf = k.shape[2], q.dtype, smem_transforms()
    # dK/dV: Q/dO ring of at most 2 slots (4 tiles per slot) to stay inside 227 KB of smem
    t = _statics(q.shape, k.shape, cfg, num_stages=min(cfg.blocks.num_stages, 2))
    bq, bk, dp, st = t.block_q, t.block_kv, t.d_chunk, t.num_stages
    qf, dof = _fold(q, kvh, t), _fold(do, kvh, t)
    qt, dot = qf.swapaxes(2, 3), dof.swapaxes(2, 3)  # [B, KVH, Dp, rows_p]
    delta = jnp.sum(of.astype(jnp.float32) * dof.astype(jnp.float32), axis=-1)  # [B, KVH, rows_p]
    kp, vp = _pad_kv(k, t), _pad_kv(v, t)  # [B, Skv_p, KVH, Dp]
    ring = [((st, bq, dp), xf), ((st, dp, bq), xf), ((st, bq, dp), xf), ((st, dp, bq), xf)]
    scratch = [
        plgpu.SMEM((bk, dp), dtype, transforms=xf),  # K, then dK
        plgpu.SMEM((bk, dp), dtype, transforms=xf),  # V, then dV
        *(plgpu.SMEM(shape, dtype, transforms=x) for shape, x in ring),  # Q, Q^T, dO, dO^T
        plgpu.SMEM((st, bq), jnp.float32), plgpu.SMEM((st, bq), jnp.float32),  # L, delta
        plgpu.SMEM((bk, bq), dtype, transforms=xf),  # P^T
        plgpu.SMEM((bk, bq), dtype, transforms=xf),  # dS^T
        plgpu.Barrier(num_barriers=2),
        tuple(plgpu.Barrier(num_barriers=st) for _ in range(6)),
    ]
    kv_type = jax.ShapeDtypeStruct(kp.shape, dtype)
    dkp, dvp = _launch(dkv_kernel, t, cfg, out_type=(kv_type, kv_type), scratch=scratch,
                       grid=(kp.shape[1] // bk, kvh, q.shape[0]),
                       grid_names=("kv_tile", "kv_head", "batch"))(
        qf, qt, dof, dot, lse, delta, kp, vp)
    # dQ: K^T, V^T, K ring
    t = _statics(q.shape, k.shape, cfg, num_stages=cfg.blocks.num_stages)
    st = t.num_stages
    scratch = [
        plgpu.SMEM((bq, dp), dtype, transforms=xf),  # Q, then dQ
        plgpu.SMEM((bq, dp), dtype, transforms=xf),  # dO
        plgpu.SMEM((bq,), jnp.float32), plgpu.SMEM((bq,), jnp.float32),  # L, delta
        plgpu.SMEM((st, dp, bk), dtype, transforms=xf),  # K^T ring
        plgpu.SMEM((st, bk, dp), dtype, transforms=xf),  # K ring
        plgpu.SMEM((st, dp, bk), dtype, transforms=xf),  # V^T ring
        plgpu.SMEM((bq, bk), dtype, transforms=xf),  # dS
        plgpu.Barrier(num_barriers=4),
        tuple(plgpu.Barrier(num_barriers=st) for _ in range(3)),
    ]
    kt, vt = kp.transpose(0, 2, 3, 1), vp.transpose(0, 2, 3, 1)  # [B, KVH, Dp, Skv_p]
    dqf = _launch(dq_kernel, t, cfg, out_type=jax.ShapeDtypeStruct(qf.shape, dtype),
                  scratch=scratch, grid=(qf.shape[2] // bq, kvh, q.shape[0]),
                  grid_names=("q_tile", "kv_head", "batch"))(qf, dof, lse, delta, kt, kp, vt)
    unkv = lambda x: x[:, : k.shape[1], :, : k.shape[3]]
    return _unfold(dqf, q.shape), unkv(dkp), unkv(dvp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, cfg):
    return _unfold(_forward(q, k, v, cfg)[0], q.shape)


def _flash_fwd(q, k, v, cfg):
    of, lse = _forward(q, k, v, cfg)
    return _unfold(of, q.shape), (q, k, v, of, lse)


def _flash_bwd(cfg, res, do):
    return _backward(*res, do, cfg)


_flash.defvjp(_flash_fwd, _flash_bwd)
_flash_jit = jax.jit(_flash, static_argnums=(3,))


def attention_pallas_mgpu(q, k, v, *, causal, window, softcap, scale, q_segment_ids,
                          kv_segment_ids, blocks: MgpuAttentionBlocks | None = None,
                          interpret: bool | None = None):
    """Flash attention forward on validated arguments (see ``kernels.jax_ops.attention``).

    scale: float; softcap: float | None; window: int | None. Segment ids must be None.
    blocks=None picks ``default_blocks``; interpret=None interprets (GPU interpret mode)
    unless JAX's default backend is a GPU.
    """
    if q.dtype not in DTYPES:
        raise TypeError(f"impl={IMPL!r} needs q, k, v in float16 or bfloat16 (wgmma "
                        f"operands), got {q.dtype}; use impl='pallas' for float32")
    if q_segment_ids is not None or kv_segment_ids is not None:
        raise ValueError(f"impl={IMPL!r} does not support segment_ids; use impl='pallas'")
    if blocks is not None and not isinstance(blocks, MgpuAttentionBlocks):
        raise TypeError(f"blocks must be MgpuAttentionBlocks or None, got {type(blocks).__name__}")
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(q.shape[-1])
    cfg = _Config(causal=bool(causal), window=window,
                  softcap=None if softcap is None else float(softcap), scale=float(scale),
                  blocks=blocks, interpret=bool(interpret))
    return _flash_jit(q, k, v, cfg)
