"""Triton split-KV decode attention for PyTorch: block sizes, split count, launcher, custom op.

    decode_triton(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None,
                  softcap=None, scale=None, blocks=None, num_splits=None)

Paged cache (block_table [B, pages_per_row]; k_cache/v_cache page pools): the kernel reads
each K/V tile from one page, so block_n becomes min(block_n, page_size) and page_size must
be a power of two >= 16. The pool is never gathered into a contiguous copy.

Layers (device code in ``triton_kernels.py``):
  ``TritonDecodeBlocks`` / ``default_blocks``  tunables and their per-device defaults;
  ``num_kv_splits``                            how many programs share one row's cache;
  ``_decode_fwd``                              allocates partials, launches split + combine;
  ``gemini_kernels::decode_attention``         ``torch.library`` custom op with a fake kernel
                                               (forward only: decode needs no backward).
Arguments arrive validated from ``kernels.torch_ops.decode_attention``. ``LAUNCHES`` counts
launches by kernel name. ``aot_kernels`` gives the launch specializations built with the
real JIT (even when this process interprets) for ahead-of-time compiles without a GPU.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .._platform import compiled_sm_count, triton_interpreting  # noqa: E402
from .._aot import aot_kernel, d_strides, jit_module, triton_dtype  # noqa: E402
from . import triton_kernels  # noqa: E402
from .spec import check_kernel_page_size  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()
MAX_SPLITS = 256  # bounds the partial buffers [B, H, S, D] and the combine's lse vector


@dataclasses.dataclass(frozen=True)
class TritonDecodeBlocks:
    """block_n cache positions per inner step, plus launch options."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    # programmatic dependent launch of both kernels (sm_90+; triton_kernels.py USE_PDL): the
    # combine starts under the split's tail. The interpreter runs launches in order anyway
    pdl: bool = False

    def __post_init__(self):
        if not isinstance(self.pdl, bool):
            raise ValueError(f"pdl={self.pdl!r} must be a bool")
        if not isinstance(self.block_n, int) or self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"block_n={self.block_n!r} must be a power of two >= 16 (tl.dot tile)")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps={self.num_warps!r} must be one of 1, 2, 4, 8, 16")
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages={self.num_stages!r} must be an int in [1, 8]")


def default_blocks(head_dim: int, dtype: torch.dtype, span: int, *,
                   capability: Optional[tuple] = None) -> TritonDecodeBlocks:
    """Default tiles; ``span`` = longest attended range (max_len, or the window if shorter).

    capability None means the interpreter: few, large numpy steps (block_n ~ span / 8).
    GPU picks are checked by tests/test_decode.py and tests/test_paged_decode.py to compile
    for sm_80 and sm_90 without spills at every dtype and head dim 64-256.
    """
    if capability is None:
        return TritonDecodeBlocks(min(256, max(16, triton.next_power_of_2(span // 8))), 4, 1)
    if dtype == torch.float32:  # ieee dots on FMA units: 4 warps spilled on sm_90 from head_dim 80
        return TritonDecodeBlocks(32, 8, 2)
    if head_dim > 128:
        return TritonDecodeBlocks(32, 4, 2)
    return TritonDecodeBlocks(64, 4, 3)


def candidate_blocks(head_dim: int, dtype: torch.dtype, span: int, *,
                     capability: tuple = (9, 0)) -> list[TritonDecodeBlocks]:
    """Autotuning candidates of the split kernel on a GPU: ``default_blocks`` first, then a
    few block_n / warps / stages neighbours (spills, if any, show in benchmarks.compile_report)."""
    base = default_blocks(head_dim, dtype, span, capability=tuple(capability))
    more = [TritonDecodeBlocks(32, 4, 3), TritonDecodeBlocks(128, 4, 2), TritonDecodeBlocks(64, 8, 3)]
    if tuple(capability) >= (9, 0):  # the default tiles launched as split -> combine with PDL (untimed)
        more.append(dataclasses.replace(base, pdl=True))
    return [base] + [b for b in more if b != base]


def num_kv_splits(batch: int, kv_heads: int, span: int, block_n: int,
                  sm_count: Optional[int]) -> int:
    """Splits per (row, kv head) so that batch * kv_heads * splits programs fill the GPU.

    GPU: 2 * sm_count programs run at once (two per SM); the time goes as the waves of
    programs times the blocks each one reads plus about one block's worth of per-program
    work (prologue, partial writes, its share of the combine),
    ceil(rows * s / slots) * (ceil(blocks / s) + 1), and the split count minimizing it wins
    (the smallest on ties),
    with every split >= 2 blocks of ``span``. Overshooting a wave by a few programs costs a
    whole extra wave of them: batch 16 at 32k took 17 splits by the old rule (272 programs
    for 264 slots) where 16 fit one wave (an H200 read at 74% of copy there, the 8-program
    tail among the suspects; the new rule is not yet timed). As FlashAttention's
    num_splits_heuristic, from the same wave-quantization reasoning.
    Interpreter (sm_count None): aim for 4 programs with >= 1 block each (tests see > 1 split).
    """
    blocks = triton.cdiv(max(span, 1), block_n)
    rows = batch * kv_heads
    if sm_count is None:
        return max(1, min(triton.cdiv(4, rows), blocks, MAX_SPLITS))
    slots, limit = 2 * sm_count, max(1, min(triton.cdiv(blocks, 2), MAX_SPLITS))
    return min(range(1, limit + 1),
               key=lambda s: (triton.cdiv(rows * s, slots) * (triton.cdiv(blocks, s) + 1), s))


def _capability(t: torch.Tensor) -> Optional[tuple]:
    if triton_interpreting() or t.device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(t.device)


def _use_pdl(blocks: TritonDecodeBlocks, q: torch.Tensor) -> bool:
    """Launch with PDL: blocks.pdl on a compiled sm_90+ device. The interpreter runs the two
    launches in order, which is what the waits give, so it takes pdl=True as plain launches;
    an older GPU cannot launch so and is refused."""
    if not blocks.pdl:
        return False
    cap = _capability(q)
    if cap is None:
        return False
    if cap < (9, 0):
        raise ValueError(f"blocks.pdl: programmatic dependent launch needs sm_90 or newer, got sm_{cap[0]}{cap[1]}")
    return True


def _span(max_len: int, window: Optional[int]) -> int:
    return max_len if window is None else min(max_len, window)


def _paged_blocks(blocks: TritonDecodeBlocks, page_size: Optional[int]) -> TritonDecodeBlocks:
    """A paged cache reads tiles inside one page: block_n <= page_size (both powers of two)."""
    if page_size is None or blocks.block_n <= page_size:
        return blocks
    return dataclasses.replace(blocks, block_n=page_size)


def _constexprs(head_dim, dtype, group, *, window, softcap, blocks, page_size=None, pdl=False):
    """Compile-time specialization of the split kernel (shared with ``aot_kernels``)."""
    return dict(USE_PDL=pdl, GROUP=group, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=blocks.block_n,
                HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None,
                PAGED=page_size is not None, PAGE_SIZE=page_size or 1,
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32")


def combine_columns(block_d: int, block_s: int) -> int:
    """Head-dim columns per combine program: all ``block_s`` shares of them at once in at most
    8192 fp32 (64 a thread at 4 warps), at least 16."""
    return max(16, min(block_d, 8192 // block_s))


def _decode_fwd(q, k_cache, v_cache, cache_seqlens, *, window, softcap, scale, blocks, num_splits,
                block_table=None):
    """Split then combine -> (o [B, H, D] in q's dtype, o_part [B, H, S, D], lse_part [B, H, S]).
    With ``block_table`` the caches are page pools and blocks.block_n must divide page_size."""
    b, h, d = q.shape
    kvh = k_cache.shape[2]
    g = h // kvh
    lens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    page_size = None
    if block_table is None:
        max_len, table = k_cache.shape[1], lens  # table: an unused int32 pointer
    else:
        page_size = k_cache.shape[1]
        table = block_table.to(device=q.device, dtype=torch.int32).contiguous()
        max_len = table.shape[1] * page_size
        assert page_size % blocks.block_n == 0, (page_size, blocks.block_n)
    o_part = torch.empty((b, h, num_splits, d), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((b, h, num_splits), dtype=torch.float32, device=q.device)
    o = torch.empty((b, h, d), dtype=q.dtype, device=q.device)
    pdl = _use_pdl(blocks, q)
    meta = _constexprs(d, q.dtype, g, window=window, softcap=softcap, blocks=blocks, page_size=page_size,
                       pdl=pdl)
    w = 0 if window is None else min(int(window), max_len)  # wider than the cache: no-op, stays int32
    launch = dict(launch_pdl=True) if pdl else {}
    triton_kernels._decode_split_kernel[(num_splits, b * kvh)](
        q, k_cache, v_cache, lens, table, o_part, lse_part,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), table.stride(0),
        max_len, kvh, num_splits, k_cache.shape[0],
        float(scale), 1.0 if softcap is None else float(softcap), w,
        **meta, num_warps=blocks.num_warps, num_stages=blocks.num_stages, **launch,
    )
    block_s = triton.next_power_of_2(num_splits)
    block_dc = combine_columns(meta["BLOCK_D"], block_s)
    triton_kernels._decode_combine_kernel[(b * h, triton.cdiv(d, block_dc))](
        o_part, lse_part, o, *o.stride(), h, num_splits,
        HEAD_DIM=d, BLOCK_S=block_s, BLOCK_DC=block_dc, USE_PDL=pdl, num_warps=4, **launch,
    )
    LAUNCHES.update(("_decode_split_kernel", "_decode_combine_kernel"))
    return o, o_part, lse_part


@torch.library.custom_op("gemini_kernels::decode_attention", mutates_args=())
def decode_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
    block_table: Optional[torch.Tensor], window: Optional[int], softcap: Optional[float], scale: float,
    block_n: int, num_warps: int, num_stages: int, num_splits: int, pdl: bool = False,
) -> torch.Tensor:
    """Decode output [B, H, D]; the launch knobs are TritonDecodeBlocks fields and the split count."""
    return _decode_fwd(q, k_cache, v_cache, cache_seqlens, window=window, softcap=softcap,
                       scale=scale, blocks=TritonDecodeBlocks(block_n, num_warps, num_stages, pdl),
                       num_splits=num_splits, block_table=block_table)[0]


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, window, softcap, scale, block_n, num_warps,
      num_stages, num_splits, pdl=False):
    return q.new_empty(q.shape)


def decode_triton(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None, softcap=None,
                  scale=None, blocks: Optional[TritonDecodeBlocks] = None,
                  num_splits: Optional[int] = None):
    """Split-KV decode attention on validated arguments (``kernels.torch_ops.decode_attention``).

    blocks=None picks ``default_blocks``; num_splits=None picks ``num_kv_splits``. A paged
    cache caps block_n at page_size (a power of two >= 16, else ValueError).
    """
    b, h, d = q.shape
    kvh = k_cache.shape[2]
    page_size = None if block_table is None else k_cache.shape[1]
    if page_size is not None:
        check_kernel_page_size(page_size, "triton")
    max_len = k_cache.shape[1] if page_size is None else block_table.shape[1] * page_size
    span = _span(max_len, window)
    if blocks is None:
        blocks = default_blocks(d, q.dtype, span, capability=_capability(q))
    elif not isinstance(blocks, TritonDecodeBlocks):
        raise ValueError(f"blocks must be None or a TritonDecodeBlocks, got {blocks!r}")
    blocks = _paged_blocks(blocks, page_size)
    if num_splits is None:
        num_splits = num_kv_splits(b, kvh, span, blocks.block_n, compiled_sm_count(q))
    if not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be an int in [1, {MAX_SPLITS}], got {num_splits!r}")
    scale = d**-0.5 if scale is None else float(scale)
    return decode_attention_op(q, k_cache, v_cache, cache_seqlens, block_table, window, softcap, scale,
                               blocks.block_n, blocks.num_warps, blocks.num_stages, num_splits, blocks.pdl)


# --- ahead-of-time compile support ---------------------------------------------------------

def aot_kernels(head_dim=128, dtype=torch.float16, *, window=None, softcap=None, group=8,
                max_len=32768, capability=(9, 0), blocks: Optional[TritonDecodeBlocks] = None,
                page_size: Optional[int] = None) -> dict:
    """name -> AotKernel for the split and combine kernels in their default GPU configuration
    (``blocks`` overrides the split kernel's, as ``decode_triton(blocks=...)`` does;
    ``page_size`` compiles the paged-cache variant)."""
    mod = jit_module(triton_kernels)
    ty = "*" + triton_dtype(dtype)
    blocks = blocks or default_blocks(head_dim, dtype, _span(max_len, window), capability=tuple(capability))
    if page_size is not None:
        check_kernel_page_size(page_size, "triton")
        blocks = _paged_blocks(blocks, page_size)
    pdl = blocks.pdl and tuple(capability) >= (9, 0)
    split_meta = _constexprs(head_dim, dtype, group, window=window, softcap=softcap, blocks=blocks,
                             page_size=page_size, pdl=pdl)
    ptrs = dict(Q=ty, K=ty, V=ty, LENS="*i32", BT="*i32", O_PART="*fp32", LSE_PART="*fp32")
    fn = mod._decode_split_kernel
    out = {"_decode_split_kernel": aot_kernel(
        fn, pointers=ptrs, constexprs=split_meta, num_warps=blocks.num_warps,
        num_stages=blocks.num_stages, floats=("sm_scale", "softcap"), unit_strides=d_strides(fn))}
    combine_meta = dict(HEAD_DIM=head_dim, BLOCK_S=MAX_SPLITS,  # the most shares: the largest tile
                        BLOCK_DC=combine_columns(split_meta["BLOCK_D"], MAX_SPLITS), USE_PDL=pdl)
    fn = mod._decode_combine_kernel
    out["_decode_combine_kernel"] = aot_kernel(
        fn, pointers=dict(O_PART="*fp32", LSE_PART="*fp32", O=ty), constexprs=combine_meta,
        num_warps=4, num_stages=1, unit_strides=d_strides(fn))
    return out
