"""Triton fused linear cross-entropy for PyTorch (Liger-Kernel's FLCE design).

    linear_cross_entropy_triton(x2 [N, W], weight [V, W], targets [N], row_weight [N], *,
                                softcap=None, blocks=None) -> loss (fp32 scalar)

Rows go in chunks of ``chunk_rows``: the chunk's logits [c, V] come from one cuBLAS matmul
in x's dtype; ``_ce_kernel`` (one program per row) makes two passes over them, an online
log-sum-exp and then the gradient (softmax - onehot) * row_weight (times the softcap's
derivative), written IN PLACE over the logits; two more matmuls turn it into dx rows and
add into dweight. The forward thus computes the gradients (nothing [N, V] is kept, and the
logits are not recomputed); the backward scales them by the incoming gradient.
Fast where: large vocabularies (256k): the peak is one chunk of logits (1 GiB by default)
instead of [N, V] fp32 logits, their log-softmax and its gradient (~4 x 8.4 GB for nano1
at 8k tokens), and the softmax makes 3 passes over bf16 logits instead of ~10 over fp32.
dweight accumulates across chunks in the weight's dtype (one rounding per chunk, as Liger).
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

from .._aot import aot_kernel, jit_module, triton_dtype  # noqa: E402
from .._platform import triton_interpreting  # noqa: E402
from .spec import check_chunk_blocks  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()
NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": exp(NEG - NEG) = 1, never NaN


@triton.jit
def _capped(z, softcap, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        a = tl.minimum(tl.maximum(z / softcap, -15.0), 15.0)
        z = softcap * (2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0)  # cap * tanh(z / cap)
    return z


@triton.jit
def _ce_kernel(
    LOGITS,      # [rows, V] the chunk's logits; overwritten with the gradient (WRITE_GRAD)
    TARGETS,     # [rows] int64, in [0, V) (masked-out rows carry 0 and row weight 0)
    ROW_W,       # [rows] fp32: mask / normalizer
    LOSS,        # [rows] fp32 out: row_weight * (lse - z[target])
    stride_row, V, softcap,
    HAS_SOFTCAP: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    m_i = tl.full([BLOCK_V], NEG, tl.float32)  # per-lane running max and sum
    s_i = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        ok = start + cols < V
        z = _capped(tl.load(base + start + cols, mask=ok, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
        z = tl.where(ok, z, NEG)
        m_new = tl.maximum(m_i, z)
        s_i = s_i * tl.exp(m_i - m_new) + tl.exp(z - m_new)
        m_i = m_new
    m = tl.max(m_i, 0)
    lse = m + tl.log(tl.sum(s_i * tl.exp(m_i - m), 0))
    target = tl.load(TARGETS + row)
    w = tl.load(ROW_W + row)
    z_t = _capped(tl.load(base + target).to(tl.float32), softcap, HAS_SOFTCAP)
    tl.store(LOSS + row, w * (lse - z_t))
    if WRITE_GRAD:
        for start in range(0, V, BLOCK_V):
            ok = start + cols < V
            z = _capped(tl.load(base + start + cols, mask=ok, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
            g = tl.exp(z - lse) - tl.where(start + cols == target, 1.0, 0.0)
            if HAS_SOFTCAP:
                g = g * (1.0 - (z / softcap) * (z / softcap))  # d cap*tanh(u/cap) / du
            tl.store(base + start + cols, (w * g).to(LOGITS.dtype.element_ty), mask=ok)


@dataclasses.dataclass(frozen=True)
class CrossEntropyBlocks:
    block_v: int = 4096        # vocab columns per step of a row's program
    num_warps: int = 8
    chunk_rows: int = 0        # rows per logits chunk; 0: as many as fit in chunk_bytes
    chunk_bytes: int = 1 << 30

    def __post_init__(self):
        if not isinstance(self.block_v, int) or self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"block_v={self.block_v!r} must be a power of two >= 16")
        check_chunk_blocks(self)

    def rows(self, n: int, vocab: int, itemsize: int) -> int:
        # at least 1 (a range() step) even for n = 0, where the forward loop then never runs
        return max(1, min(n, self.chunk_rows or self.chunk_bytes // (vocab * itemsize)))


def default_blocks(vocab: int, *, capability: Optional[tuple] = None) -> CrossEntropyBlocks:
    """Interpreter: a whole row per step (numpy tiles). GPU: 4096 columns x 8 warps
    (16 fp32 per thread per array, 16-byte loads)."""
    if capability is None:
        return CrossEntropyBlocks(block_v=min(65536, triton.next_power_of_2(vocab)), num_warps=4)
    return CrossEntropyBlocks()


def _ce_rows(logits, targets, row_w, loss, softcap, blocks, write_grad):
    _ce_kernel[(logits.shape[0],)](
        logits, targets, row_w, loss, logits.stride(0), logits.shape[1],
        1.0 if softcap is None else float(softcap), HAS_SOFTCAP=softcap is not None,
        WRITE_GRAD=write_grad, BLOCK_V=blocks.block_v, num_warps=blocks.num_warps)
    LAUNCHES["_ce_kernel"] += 1


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, row_w, softcap, blocks):
        n, v = x.shape[0], weight.shape[0]
        want_dx, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss = torch.empty(n, dtype=torch.float32, device=x.device)
        dx = torch.empty_like(x) if want_dx else None
        dw = torch.zeros_like(weight) if want_dw else None
        step = blocks.rows(n, v, x.element_size())  # n == 0: no chunk, no launch; loss 0, zero grads
        for s in range(0, n, step):
            xc = x[s:s + step]
            logits = xc @ weight.T  # [c, V] in x's dtype (fp32 accumulation inside the matmul)
            _ce_rows(logits, targets[s:s + step], row_w[s:s + step], loss[s:s + step], softcap, blocks,
                     want_dx or want_dw)
            if want_dx:
                torch.mm(logits, weight, out=dx[s:s + step])
            if want_dw:
                dw.addmm_(logits.T, xc)
        ctx.save_for_backward(dx, dw)
        return loss.sum()

    @staticmethod
    def backward(ctx, g):
        dx, dw = ctx.saved_tensors
        scale = lambda t: None if t is None else t * g.to(t.dtype)  # noqa: E731
        return scale(dx), scale(dw), None, None, None, None


def linear_cross_entropy_triton(x, weight, targets, row_weight, *, softcap=None,
                                blocks: Optional[CrossEntropyBlocks] = None):
    """sum_i row_weight_i * nll_i for validated x [N, W], weight [V, W], targets [N] (in [0, V)
    wherever row_weight != 0), row_weight [N] fp32; differentiable in x and weight.
    Under autocast, x and weight run in the autocast dtype (dweight flows back through the cast)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight = x.to(dt), weight.to(dt)
    if blocks is None:
        cap = None if triton_interpreting() or dev != "cuda" else torch.cuda.get_device_capability(x.device)
        blocks = default_blocks(weight.shape[0], capability=cap)
    targets = torch.where(row_weight != 0, targets.long(), 0).contiguous()
    with torch.autocast(dev, enabled=False):
        return _LinearCrossEntropy.apply(x.contiguous(), weight.contiguous(), targets,
                                         row_weight.float().contiguous(), softcap, blocks)


def aot_kernels(dtype=torch.bfloat16, *, softcap=False, capability=(9, 0)) -> dict:
    mod = jit_module(sys.modules[__name__])
    blocks = default_blocks(256000, capability=tuple(capability))
    return {"_ce_kernel": aot_kernel(
        mod._ce_kernel, pointers=dict(LOGITS="*" + triton_dtype(dtype), TARGETS="*i64", ROW_W="*fp32",
                                      LOSS="*fp32"),
        constexprs=dict(HAS_SOFTCAP=softcap, WRITE_GRAD=True, BLOCK_V=blocks.block_v),
        floats=("softcap",), num_warps=blocks.num_warps,
        sizes16=("V",))}  # 256000: the JIT specializes the vocab as divisible by 16
