"""MQA/GQA flash attention forward in Pallas Mosaic GPU (Hopper: TMA, mbarriers, wgmma).

    attention_pallas_mgpu(q, k, v, *, causal, window, softcap, scale, q_segment_ids,
                          kv_segment_ids, blocks=None, interpret=None)

Computes softmax(scale * q k^T [soft-capped, masked]) v for q [B, Sq, H, D] and
k, v [B, Skv, KVH, D] with the semantics of ``spec.py`` (bottom-right causal, sliding
window, softcap, rows that see no key return 0). The G = H / KVH query heads of a kv
group are folded into the rows of each q tile, so each K/V tile is loaded once per group.
Device code: ``pallas_mgpu_kernels.py``.

Limits: forward only (gradients raise NotImplementedError: use impl="pallas");
float16 / bfloat16 only (wgmma operands; float32 raises TypeError); no segment_ids
(ValueError; use impl="pallas"); head_dim padded to 64, 128 or 256; any lengths (padded
here to block multiples). K is re-laid out to [B, KVH, D, Skv] (one copy of K per call).
Fast where: H100/H200, long sequences with MQA/GQA. Without a GPU it runs in Pallas's GPU
interpret mode (a CPU simulation of smem, TMA and barriers; slow, for tests).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from .._platform import pallas_interpret_default
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


def _forward(q, k, v, cfg: _Config):
    """Fold / pad / transpose, launch, unfold: o [B, Sq, H, D]."""
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    bq, bk = cfg.blocks.block_q, cfg.blocks.block_kv
    rows_p, kv_p, d_p = pl.cdiv(sq * g, bq) * bq, pl.cdiv(skv, bk) * bk, _padded_head_dim(d)
    dc = min(d_p, 128)
    t = MgpuTileStatics(q_len=sq, kv_len=skv, kv_len_padded=kv_p, group=g, block_q=bq,
                        block_kv=bk, num_stages=cfg.blocks.num_stages, d_chunk=dc,
                        num_chunks=d_p // dc, causal=cfg.causal, window=cfg.window,
                        softcap=cfg.softcap, scale=cfg.scale, layout_hints=not cfg.interpret)
    # q [B, Sq, H, D] -> folded [B, KVH, rows_p, Dp], row r = s * G + g
    qf = q.reshape(b, sq, kvh, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kvh, sq * g, d)
    qf = _pad_to(_pad_to(qf, 2, rows_p), 3, d_p)
    kt = _pad_to(_pad_to(k, 1, kv_p), 3, d_p).transpose(0, 2, 3, 1)  # [B, KVH, Dp, Skv_p]
    vp = _pad_to(_pad_to(v, 1, kv_p), 3, d_p)  # copies only when padding is needed
    nc, st, xf = t.num_chunks, t.num_stages, smem_transforms()
    scratch = [
        plgpu.SMEM((nc, bq, dc), q.dtype, transforms=xf),  # Q, then O
        plgpu.SMEM((nc, st, dc, bk), q.dtype, transforms=xf),  # K^T ring
        plgpu.SMEM((nc, st, bk, dc), q.dtype, transforms=xf),  # V ring
        plgpu.SMEM((bq, bk), q.dtype, transforms=xf),  # P
        tuple(plgpu.Barrier() for _ in range(nc)),
        tuple(plgpu.Barrier(num_barriers=st) for _ in range(nc)),
        tuple(plgpu.Barrier(num_barriers=st) for _ in range(nc)),
    ]
    extra = {"interpret": interpret_params()} if cfg.interpret else {}
    of = plgpu.kernel(
        functools.partial(fwd_kernel, t=t),
        out_type=jax.ShapeDtypeStruct(qf.shape, q.dtype),
        scratch_types=scratch,
        grid=(rows_p // bq, kvh, b),
        grid_names=("q_tile", "kv_head", "batch"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        **extra,
    )(qf, kt, vp)
    of = of[:, :, : sq * g, :d].reshape(b, kvh, sq, g, d)
    return of.transpose(0, 2, 1, 3, 4).reshape(b, sq, h, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, cfg):
    return _forward(q, k, v, cfg)


def _flash_fwd(q, k, v, cfg):
    return _forward(q, k, v, cfg), None


def _flash_bwd(cfg, res, do):
    raise NotImplementedError(
        f"impl={IMPL!r} is forward-only: it has no backward kernel; use impl='pallas' "
        "for gradients")


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
