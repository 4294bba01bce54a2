"""Triton rotary embedding (rope and rope_2d, rotate-half) for PyTorch: kernel, launcher, autograd.

    rope_triton(x, positions, *, theta, sections=1, blocks=None)

x [B, S, H, D] is seen as B*S*H rows of D (contiguous; otherwise copied). A program rotates
BLOCK_R rows: per section, a [BLOCK_R, next_pow2(half)] tile of pairs (i, i + half), angles
= position * inv_freq in fp32, range-reduced to [-pi, pi] before cos/sin (so a fast
hardware sin/cos stays accurate at large positions). The backward is the same kernel with
the angle negated. Limits: D % (2 * sections) == 0; positions are read as int32, so
|position| < 2^31: refused for CPU positions (host memory, the interpreter), not checked on
a GPU (a device sync; there int64 positions >= 2^31 wrap; ``spec.py``). Fast where: memory
bound, one read and one write of x; cos/sin are recomputed per head (cheap next to the
memory traffic). Arguments arrive validated from ``kernels.torch_ops``. ``LAUNCHES`` counts
launches.
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
from . import spec
from .reference import inv_freq

LAUNCHES: collections.Counter = collections.Counter()
TWO_PI_HI = tl.constexpr(spec.TWO_PI_HI)  # kernels may read only constexpr globals
TWO_PI_LO = tl.constexpr(spec.TWO_PI_LO)
INV_TWO_PI = tl.constexpr(spec.INV_TWO_PI)


@triton.jit
def _rope_kernel(
    X,           # [n_rows, HEAD_DIM] input rows (token-major, heads inner), contiguous
    POS,         # [n_rows / heads, SECTIONS] int positions
    INV_FREQ,    # [HALF] fp32
    Y,           # [n_rows, HEAD_DIM] output
    n_rows, heads,
    HEAD_DIM: tl.constexpr, SECTIONS: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr, BLOCK_R: tl.constexpr, INVERSE: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    tok = rows // heads
    j = tl.arange(0, BLOCK_HALF)
    j_ok = j < HALF
    mask = row_ok[:, None] & j_ok[None, :]
    inv = tl.load(INV_FREQ + j, mask=j_ok, other=0.0)
    base = rows[:, None] * HEAD_DIM + j[None, :]
    for s in tl.static_range(SECTIONS):
        p = tl.load(POS + tok * SECTIONS + s, mask=row_ok, other=0).to(tl.float32)
        ang = p[:, None] * inv[None, :]
        k = tl.floor(ang * INV_TWO_PI + 0.5)
        ang = (ang - k * TWO_PI_HI) - k * TWO_PI_LO  # in [-pi, pi]
        c = tl.cos(ang)
        sn = tl.sin(ang)
        if INVERSE:
            sn = -sn
        o1 = base + s * 2 * HALF
        x1 = tl.load(X + o1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + o1 + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + o1, (x1 * c - x2 * sn).to(Y.dtype.element_ty), mask=mask)
        tl.store(Y + o1 + HALF, (x2 * c + x1 * sn).to(Y.dtype.element_ty), mask=mask)


@dataclasses.dataclass(frozen=True)
class RopeBlocks:
    block_r: int = 16
    num_warps: int = 4

    def __post_init__(self):
        if not isinstance(self.block_r, int) or not 1 <= self.block_r <= 1024 or self.block_r & (self.block_r - 1):
            raise ValueError(f"block_r={self.block_r!r} must be a power of two in [1, 1024]")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps={self.num_warps!r} must be one of 1, 2, 4, 8, 16")


def default_blocks(head_dim: int, *, capability: Optional[tuple] = None) -> RopeBlocks:
    """Interpreter: ~16k-element tiles. GPU: ~2k pairs per program, 4 warps; 8 when the
    half is masked (head_dim 72, 80, 96: 4 warps spilled around sin/cos's slow path)."""
    half = triton.next_power_of_2(max(1, head_dim // 2))
    if capability is None:
        return RopeBlocks(max(1, min(1024, 16384 // half)), 4)
    return RopeBlocks(max(1, min(64, 2048 // half)), 4 if half == head_dim // 2 else 8)


def _launch(x, pos, *, theta, sections, inverse, blocks):
    b, s, h, d = x.shape
    half = d // (2 * sections)
    xc = x.contiguous()
    y = torch.empty_like(xc)
    inv = inv_freq(half, theta, x.device, torch.float32)  # on the device once (graph capture)
    n_rows = b * s * h
    _rope_kernel[(triton.cdiv(n_rows, blocks.block_r),)](
        xc, pos, inv, y, n_rows, h, HEAD_DIM=d, SECTIONS=sections, HALF=half,
        BLOCK_HALF=triton.next_power_of_2(half), BLOCK_R=blocks.block_r, INVERSE=inverse,
        num_warps=blocks.num_warps)
    LAUNCHES["_rope_kernel"] += 1
    return y


class _RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positions, theta, sections, blocks):
        pos = positions.reshape(-1, sections).to(torch.int32).contiguous()
        ctx.save_for_backward(pos)
        ctx.cfg = (theta, sections, blocks)
        return _launch(x, pos, theta=theta, sections=sections, inverse=False, blocks=blocks)

    @staticmethod
    def backward(ctx, dy):
        (pos,) = ctx.saved_tensors
        theta, sections, blocks = ctx.cfg
        return _launch(dy, pos, theta=theta, sections=sections, inverse=True, blocks=blocks), \
            None, None, None, None


def rope_triton(x, positions, *, theta: float, sections: int = 1, blocks: Optional[RopeBlocks] = None):
    """Rotate x [B, S, H, D] by integer positions [B, S] (sections=1) or [B, S, 2] (sections=2).
    |position| < 2^31 (int32 in the kernel): refused for CPU positions, unchecked on a GPU."""
    if (positions.device.type == "cpu" and torch.iinfo(positions.dtype).max >= spec.POSITION_LIMIT
            and positions.numel() and not torch.compiler.is_compiling()):  # host memory: no sync
        spec.check_position_range("positions" if sections == 1 else "positions_hw",
                                  int(positions.min()), int(positions.max()))
    if blocks is None:
        cap = None if triton_interpreting() or x.device.type != "cuda" else \
            torch.cuda.get_device_capability(x.device)
        blocks = default_blocks(x.shape[-1], capability=cap)
    return _RopeFunction.apply(x, positions, float(theta), int(sections), blocks)


def aot_kernels(head_dim=128, dtype=torch.bfloat16, *, sections=1, capability=(9, 0)) -> dict:
    mod = jit_module(sys.modules[__name__])
    blocks = default_blocks(head_dim, capability=tuple(capability))
    ty = "*" + triton_dtype(dtype)
    half = head_dim // (2 * sections)
    meta = dict(HEAD_DIM=head_dim, SECTIONS=sections, HALF=half,
                BLOCK_HALF=triton.next_power_of_2(half), BLOCK_R=blocks.block_r)
    return {f"_rope_kernel_{'bwd' if inverse else 'fwd'}": aot_kernel(
        mod._rope_kernel, pointers=dict(X=ty, POS="*i32", INV_FREQ="*fp32", Y=ty),
        constexprs={**meta, "INVERSE": inverse}, num_warps=blocks.num_warps)
        for inverse in (False, True)}
