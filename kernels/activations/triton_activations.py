"""Triton gelu / gated_gelu (GeGLU) for PyTorch: kernels, launchers and the autograd shell.

    gelu_triton(x, up=None, *, approximate="tanh", blocks=None) -> gelu(x) [* up]

Elementwise over the flattened tensors in BLOCK-element tiles with 64-bit offsets; fp32
math (tanh from exp, erf from libdevice), one rounding. The backward recomputes gelu from
x (nothing saved but the inputs) and writes dx (and dup) in one pass.
Limits: a non-contiguous input costs a copy. Fast where: large activations (memory bound);
the fused GeGLU reads gate and up once instead of materializing gelu(gate).
Arguments arrive validated from ``kernels.torch_ops``. ``LAUNCHES`` counts launches.
"""
import collections
import dataclasses
import sys
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .._platform import triton_interpreting
from .._aot import aot_kernel, jit_module, triton_dtype

LAUNCHES: collections.Counter = collections.Counter()
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # kernels may read only constexpr globals
INV_SQRT_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu_and_grad(x, APPROX_TANH: tl.constexpr):
    """(gelu(x), gelu'(x)) in fp32."""
    if APPROX_TANH:
        u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        u = tl.minimum(tl.maximum(u, -15.0), 15.0)  # tanh is +-1 in fp32 there; no exp overflow
        t = 2.0 / (1.0 + tl.exp(-2.0 * u)) - 1.0  # tanh(u)
        y = 0.5 * x * (1.0 + t)
        dy = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * INV_SQRT_2))
        y = x * cdf
        dy = cdf + x * INV_SQRT_2PI * tl.exp(-0.5 * x * x)
    return y, dy


@triton.jit
def _gelu_fwd_kernel(
    X,       # [n] gelu input (the gate)
    UP,      # [n] multiplier (HAS_UP) or a dummy pointer
    Y,       # [n] output
    n,
    APPROX_TANH: tl.constexpr, HAS_UP: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y, _ = _gelu_and_grad(x, APPROX_TANH)
    if HAS_UP:
        y = y * tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd_kernel(
    DY,      # [n] output gradient
    X,       # [n] gelu input
    UP,      # [n] multiplier (HAS_UP) or a dummy pointer
    DX,      # [n] gradient of x: dy * up * gelu'(x)
    DUP,     # [n] gradient of up: dy * gelu(x) (HAS_UP) or a dummy pointer
    n,
    APPROX_TANH: tl.constexpr, HAS_UP: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y, dgelu = _gelu_and_grad(x, APPROX_TANH)
    if HAS_UP:
        up = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DUP + offs, (dy * y).to(DUP.dtype.element_ty), mask=mask)
        dy = dy * up
    tl.store(DX + offs, (dy * dgelu).to(DX.dtype.element_ty), mask=mask)


@dataclasses.dataclass(frozen=True)
class ActivationBlocks:
    block: int = 1024
    num_warps: int = 4

    def __post_init__(self):
        if not isinstance(self.block, int) or self.block < 128 or self.block & (self.block - 1):
            raise ValueError(f"block={self.block!r} must be a power of two >= 128")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps={self.num_warps!r} must be one of 1, 2, 4, 8, 16")


def default_blocks(*, capability: Optional[tuple] = None) -> ActivationBlocks:
    """Interpreter: big numpy tiles. GPU: 1024 elements x 4 warps (8 per thread, 16-byte loads)."""
    return ActivationBlocks(65536, 4) if capability is None else ActivationBlocks(1024, 4)


def _launch(kernel, n, blocks, *args, approximate, has_up):
    if n == 0:  # empty tensors: nothing to launch (the outputs are empty too)
        return
    kernel[(triton.cdiv(n, blocks.block),)](
        *args, n, APPROX_TANH=approximate == "tanh", HAS_UP=has_up, BLOCK=blocks.block,
        num_warps=blocks.num_warps)
    LAUNCHES[kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__] += 1


class _GeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, up, approximate, blocks):
        xc = x.contiguous()
        upc = up.contiguous() if up is not None else None
        y = torch.empty_like(xc)
        _launch(_gelu_fwd_kernel, xc.numel(), blocks, xc, upc if upc is not None else xc, y,
                approximate=approximate, has_up=upc is not None)
        ctx.save_for_backward(xc, upc)
        ctx.cfg = (approximate, blocks)
        return y

    @staticmethod
    def backward(ctx, dy):
        xc, upc = ctx.saved_tensors
        approximate, blocks = ctx.cfg
        dyc = dy.contiguous()
        dx = torch.empty_like(xc)
        dup = torch.empty_like(upc) if upc is not None else None
        _launch(_gelu_bwd_kernel, xc.numel(), blocks, dyc, xc, upc if upc is not None else xc, dx,
                dup if dup is not None else dx, approximate=approximate, has_up=upc is not None)
        return dx, dup, None, None


def gelu_triton(x, up=None, *, approximate: str = "tanh", blocks: Optional[ActivationBlocks] = None):
    """gelu(x) (up None) or gelu(x) * up on validated arguments; differentiable in x and up."""
    if blocks is None:
        cap = None if triton_interpreting() or x.device.type != "cuda" else \
            torch.cuda.get_device_capability(x.device)
        blocks = default_blocks(capability=cap)
    return _GeluFunction.apply(x, up, approximate, blocks)


def aot_kernels(dtype=torch.bfloat16, *, approximate="tanh", gated=True, capability=(9, 0)) -> dict:
    mod = jit_module(sys.modules[__name__])
    blocks = default_blocks(capability=tuple(capability))
    ty = "*" + triton_dtype(dtype)
    meta = dict(APPROX_TANH=approximate == "tanh", HAS_UP=gated, BLOCK=blocks.block)
    return {
        # n (elements) divisible by 16, as the JIT specializes the model's sizes
        "_gelu_fwd_kernel": aot_kernel(mod._gelu_fwd_kernel, pointers=dict(X=ty, UP=ty, Y=ty),
                                       constexprs=meta, num_warps=blocks.num_warps, sizes16=("n",)),
        "_gelu_bwd_kernel": aot_kernel(mod._gelu_bwd_kernel,
                                       pointers=dict(DY=ty, X=ty, UP=ty, DX=ty, DUP=ty),
                                       constexprs=meta, num_warps=blocks.num_warps, sizes16=("n",)),
    }
