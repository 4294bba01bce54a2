"""Pallas (GPU/Triton lowering) gelu / gated_gelu (GeGLU) for JAX, forward and backward.

    gelu_pallas(x, up=None, *, approximate="tanh", blocks=None, interpret=None)

Elementwise over the flattened arrays in ``block``-element tiles, read with masked gathers
from whole-array refs (no padding copies for odd sizes); fp32 math, one rounding. The
backward recomputes gelu from x and writes dx (and dup) in one pass.
Limits: 32-bit offsets in the Triton lowering (arrays < 2^31 elements). Fast where: large
memory-bound activations on GPU; interpret mode (no GPU) is slow and meant for tests.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._platform import pallas_interpret_default

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@dataclasses.dataclass(frozen=True)
class PallasActivationBlocks:
    block: int = 1024
    num_warps: int = 4

    def __post_init__(self):
        if not isinstance(self.block, int) or self.block < 128 or self.block & (self.block - 1):
            raise ValueError(f"block must be a power of two >= 128, got {self.block!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")


def default_blocks(*, interpret: bool) -> PallasActivationBlocks:
    return PallasActivationBlocks(65536, 4) if interpret else PallasActivationBlocks(1024, 4)


@dataclasses.dataclass(frozen=True)
class _Config:
    approximate: str
    blocks: PallasActivationBlocks
    interpret: bool


def _gelu_and_grad(x, approximate: str):
    """(gelu(x), gelu'(x)) in fp32."""
    if approximate == "tanh":
        t = jnp.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        return (0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x))
    cdf = _normal_cdf(x)
    return x * cdf, cdf + x * (1.0 / math.sqrt(2.0 * math.pi)) * jnp.exp(-0.5 * x * x)


# Cephes' single-precision erf (|z| < 1) and erfc (1 <= |z| < 2, and beyond) coefficients:
# erf(z) = z T(z^2); erfc(z) = exp(-z^2) / z * P(1 / z^2) or R(1 / z^2)
_ERF_T = (7.853861353153693e-5, -8.010193625184903e-4, 5.188327685732524e-3, -2.685381193529856e-2,
          1.128358514861418e-1, -3.761262582423300e-1, 1.128379165726710e+0)
_ERFC_P = (2.326819970068386e-2, -1.387039388740657e-1, 3.687424674597105e-1, -5.824733027278666e-1,
           6.210004621745983e-1, -4.944515323274145e-1, 3.404879937665872e-1, -2.741127028184656e-1,
           5.638259427386472e-1)
_ERFC_R = (-1.047766399936249e+1, 1.297719955372516e+1, -7.495518717768503e+0, 2.921019019210786e+0,
           -1.015265279202700e+0, 4.218463358204948e-1, -2.820767439740514e-1, 5.641895067754075e-1)


def _horner(coeffs, z):
    out = jnp.full_like(z, coeffs[0])
    for c in coeffs[1:]:
        out = out * z + c
    return out


def _normal_cdf(x):
    """Phi(x) = erfc(-x / sqrt(2)) / 2 in fp32 from exp and polynomials: Pallas's Triton
    lowering has no erf (jax 0.11.2). Far left it takes erfc's own form rather than
    (1 + erf) / 2, whose cancellation the framework's fp32 gelu pays (4.7 % relative at
    x = -5 against 1.7e-6 here)."""
    s = x * (1.0 / math.sqrt(2.0))
    a = jnp.abs(s)
    near = 0.5 + 0.5 * s * _horner(_ERF_T, s * s)  # |s| < 1
    q = 1.0 / jnp.maximum(a, 1.0)
    tail = jnp.exp(-a * a) * q * jnp.where(a < 2.0, _horner(_ERFC_P, q * q), _horner(_ERFC_R, q * q))
    far = jnp.where(s < 0, 0.5 * tail, 1.0 - 0.5 * tail)  # erfc(|s|) / 2, or 1 minus it
    return jnp.where(a < 1.0, near, far)


def _offsets(n, block):
    offs = pl.program_id(0) * block + jnp.arange(block)
    return offs, offs < n


def _fwd_kernel(*refs, cfg: _Config, has_up: bool):
    x_ref, up_ref, y_ref = (refs[0], refs[1], refs[2]) if has_up else (refs[0], None, refs[1])
    offs, mask = _offsets(x_ref.shape[0], cfg.blocks.block)
    x = plgpu.load(x_ref.at[offs], mask=mask, other=0.0).astype(jnp.float32)
    y, _ = _gelu_and_grad(x, cfg.approximate)
    if has_up:
        y = y * plgpu.load(up_ref.at[offs], mask=mask, other=0.0).astype(jnp.float32)
    plgpu.store(y_ref.at[offs], y.astype(y_ref.dtype), mask=mask)


def _bwd_kernel(*refs, cfg: _Config, has_up: bool):
    if has_up:
        dy_ref, x_ref, up_ref, dx_ref, dup_ref = refs
    else:
        (dy_ref, x_ref, dx_ref), up_ref, dup_ref = refs, None, None
    offs, mask = _offsets(x_ref.shape[0], cfg.blocks.block)
    dy = plgpu.load(dy_ref.at[offs], mask=mask, other=0.0).astype(jnp.float32)
    x = plgpu.load(x_ref.at[offs], mask=mask, other=0.0).astype(jnp.float32)
    y, dgelu = _gelu_and_grad(x, cfg.approximate)
    if has_up:
        up = plgpu.load(up_ref.at[offs], mask=mask, other=0.0).astype(jnp.float32)
        plgpu.store(dup_ref.at[offs], (dy * y).astype(dup_ref.dtype), mask=mask)
        dy = dy * up
    plgpu.store(dx_ref.at[offs], (dy * dgelu).astype(dx_ref.dtype), mask=mask)


def _call(kernel, ins, n_out, cfg: _Config, name: str, *, has_up: bool):
    flat = [a.reshape(-1) for a in ins]
    n = flat[0].shape[0]
    if n == 0:  # empty arrays: no launch (a 0-element ref cannot be gathered from)
        return [jnp.zeros(ins[-1].shape, flat[-1].dtype) for _ in range(n_out)]
    outs = pl.pallas_call(
        functools.partial(kernel, cfg=cfg, has_up=has_up),
        grid=(pl.cdiv(n, cfg.blocks.block),),
        out_shape=[jax.ShapeDtypeStruct((n,), flat[-1].dtype)] * n_out,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.blocks.num_warps, num_stages=1),
        interpret=cfg.interpret, name=name,
    )(*flat)
    return [o.reshape(ins[-1].shape) for o in outs]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gelu(x, up, cfg):
    return _gelu_fwd(x, up, cfg)[0]


def _gelu_fwd(x, up, cfg):
    ins = [x] if up is None else [x, up]
    (y,) = _call(_fwd_kernel, ins, 1, cfg, "gated_gelu_fwd" if up is not None else "gelu_fwd",
                 has_up=up is not None)
    return y, (x, up)


def _gelu_bwd(cfg, res, dy):
    x, up = res
    ins = [dy, x] if up is None else [dy, x, up]
    outs = _call(_bwd_kernel, ins, 1 if up is None else 2, cfg,
                 "gated_gelu_bwd" if up is not None else "gelu_bwd", has_up=up is not None)
    return (outs[0], None) if up is None else (outs[0], outs[1])


_gelu.defvjp(_gelu_fwd, _gelu_bwd)
_gelu_jit = jax.jit(_gelu, static_argnums=(2,))


def gelu_pallas(x, up=None, *, approximate: str = "tanh", blocks: PallasActivationBlocks | None = None,
                interpret: bool | None = None):
    """gelu(x) (up None) or gelu(x) * up on validated arguments; differentiable in x and up."""
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = default_blocks(interpret=interpret)
    return _gelu_jit(x, up, _Config(approximate=approximate, blocks=blocks, interpret=bool(interpret)))
