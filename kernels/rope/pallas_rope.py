"""Pallas (GPU/Triton lowering) rotary embedding (rope and rope_2d, rotate-half) for JAX.

    rope_pallas(x, positions, *, theta, sections=1, blocks=None, interpret=None)

Same layout and math as ``triton_rope.py``: x [B, S, H, D] as B*S*H rows of D, a program
rotates block_r rows, per section a [block_r, next_pow2(half)] tile of pairs (i, i + half);
fp32 angles range-reduced to [-pi, pi] before cos/sin. Whole-array refs read with masked
gathers (odd row counts and head_dims need no padding). The backward is the inverse
rotation. Limits: 32-bit offsets in the Triton lowering (x < 2^31 elements); positions are
read as int32, so |position| < 2^31: refused for numpy / concrete CPU positions wider than
32 bits, unchecked on a GPU or under jit (``spec.py``). Fast where:
memory bound on GPU; interpret mode (no GPU) is slow and meant for tests.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default
from .spec import INV_TWO_PI, POSITION_LIMIT, TWO_PI_HI, TWO_PI_LO, check_position_range, inv_freq64


@dataclasses.dataclass(frozen=True)
class PallasRopeBlocks:
    block_r: int = 16
    num_warps: int = 4

    def __post_init__(self):
        if not isinstance(self.block_r, int) or not 1 <= self.block_r <= 1024 or self.block_r & (self.block_r - 1):
            raise ValueError(f"block_r must be a power of two in [1, 1024], got {self.block_r!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")


def default_blocks(head_dim: int, *, interpret: bool) -> PallasRopeBlocks:
    half = pl.next_power_of_2(max(1, head_dim // 2))
    if interpret:
        return PallasRopeBlocks(max(1, min(1024, 16384 // half)), 4)
    return PallasRopeBlocks(max(1, min(64, 2048 // half)), 4)


@dataclasses.dataclass(frozen=True)
class _Config:
    theta: float
    sections: int
    heads: int
    blocks: PallasRopeBlocks
    interpret: bool


def _kernel(x_ref, pos_ref, inv_ref, y_ref, *, cfg: _Config, inverse: bool):
    n_rows, d = x_ref.shape
    half = d // (2 * cfg.sections)
    bh, br = pl.next_power_of_2(half), cfg.blocks.block_r
    rows = pl.program_id(0) * br + jnp.arange(br)
    j = jnp.arange(bh)
    row_ok, j_ok = rows < n_rows, j < half
    mask = row_ok[:, None] & j_ok[None, :]
    tok = rows // cfg.heads
    inv = plgpu.load(inv_ref.at[j], mask=j_ok, other=0.0)
    for s in range(cfg.sections):
        p = plgpu.load(pos_ref.at[tok, jnp.full((br,), s, jnp.int32)], mask=row_ok, other=0)
        ang = p.astype(jnp.float32)[:, None] * inv[None, :]
        k = jnp.floor(ang * INV_TWO_PI + 0.5)
        ang = (ang - k * TWO_PI_HI) - k * TWO_PI_LO
        c, sn = jnp.cos(ang), jnp.sin(ang)
        if inverse:
            sn = -sn
        i1 = (rows[:, None], (s * 2 * half + j)[None, :])
        i2 = (rows[:, None], (s * 2 * half + half + j)[None, :])
        x1 = plgpu.load(x_ref.at[i1], mask=mask, other=0.0).astype(jnp.float32)
        x2 = plgpu.load(x_ref.at[i2], mask=mask, other=0.0).astype(jnp.float32)
        plgpu.store(y_ref.at[i1], (x1 * c - x2 * sn).astype(y_ref.dtype), mask=mask)
        plgpu.store(y_ref.at[i2], (x2 * c + x1 * sn).astype(y_ref.dtype), mask=mask)


def _apply(x, pos, cfg: _Config, inverse: bool):
    b, s, h, d = x.shape
    half = d // (2 * cfg.sections)
    x2 = x.reshape(b * s * h, d)
    inv = jnp.asarray(inv_freq64(half, cfg.theta).astype("float32"))
    y = pl.pallas_call(
        functools.partial(_kernel, cfg=cfg, inverse=inverse),
        grid=(pl.cdiv(b * s * h, cfg.blocks.block_r),),
        out_shape=jax.ShapeDtypeStruct(x2.shape, x.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=cfg.blocks.num_warps, num_stages=1),
        interpret=cfg.interpret, name="rope_bwd" if inverse else "rope_fwd",
    )(x2, pos, inv)
    return y.reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _rope(x, pos, cfg):
    return _apply(x, pos, cfg, False)


def _rope_fwd(x, pos, cfg):
    return _apply(x, pos, cfg, False), pos


def _rope_bwd(cfg, pos, dy):
    return _apply(dy, pos, cfg, True), None


_rope.defvjp(_rope_fwd, _rope_bwd)
_rope_jit = jax.jit(_rope, static_argnums=(2,))


def _on_host(a) -> bool:
    """Values readable without a device sync: numpy, or a concrete jax array on CPU."""
    if isinstance(a, np.ndarray):
        return True
    return (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
            and all(d.platform == "cpu" for d in a.devices()))


def rope_pallas(x, positions, *, theta: float, sections: int = 1,
                blocks: PallasRopeBlocks | None = None, interpret: bool | None = None):
    """Rotate x [B, S, H, D] by integer positions [B, S] (sections=1) or [B, S, 2] (sections=2).
    |position| < 2^31 (int32 in the kernel): refused for host positions, unchecked on a GPU."""
    if _on_host(positions) and np.iinfo(np.dtype(positions.dtype)).max >= POSITION_LIMIT and positions.size:
        check_position_range("positions" if sections == 1 else "positions_hw",
                             int(np.min(positions)), int(np.max(positions)))
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(x.shape[-1], interpret=interpret)
    cfg = _Config(theta=float(theta), sections=int(sections), heads=int(x.shape[2]), blocks=blocks,
                  interpret=bool(interpret))
    pos = positions.reshape(-1, sections).astype(jnp.int32)
    return _rope_jit(x, pos, cfg)
