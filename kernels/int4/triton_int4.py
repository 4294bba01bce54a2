"""Triton int4 dequantizing matmul for PyTorch: block sizes, split-K choice, launcher, custom op.

    int4_matmul_triton(x, packed_w, scales, zeros, group_size, *, blocks=None)

Layers (device code in ``triton_kernels.py``):
  ``Int4Blocks`` / ``default_blocks``  tunables; decode rows (M <= 16) get a GEMV-style
                                       config (BLOCK_M 16, split-K to fill the SMs), prefill
                                       a tensor-core GEMM tile;
  ``_int4_matmul``                     allocates, picks the grid, launches (split-K partials
                                       are summed inside the launch: one kernel);
  ``gemini_kernels::int4_matmul``      ``torch.library`` custom op with a fake kernel
                                       (forward only: frozen, quantized weights).
Arguments arrive validated from ``kernels.torch_ops.int4_matmul``. ``LAUNCHES`` counts
launches by kernel name. ``aot_kernels`` builds the default GPU specializations with the real
JIT (even when this process interprets) for ahead-of-time compiles without a GPU;
``candidate_blocks`` lists autotuning candidates.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .._aot import aot_kernel as _aot_kernel, check_triton_blocks, jit_module, triton_dtype  # noqa: E402
from .._platform import triton_interpreting  # noqa: E402
from . import triton_kernels  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()
MAX_SPLIT_K = 64


@dataclasses.dataclass(frozen=True)
class Int4Blocks:
    """Output tile [block_m, block_n], reduction step block_k (clamped to group_size), split_k
    programs along the reduction (0 = choose from the shape and the SM count), launch knobs."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    # 16-bit x: the dot takes the codes as exact values (128 + q in bf16, 1024 + q in fp16, one
    # OR each) and the group's scale and zero apply to the product (triton_kernels.py)
    scale_after_dot: bool = False
    # split-K launches: each program loads the scale (and zero) rows of its K range once, before
    # the loop, instead of one [block_n] row per step (a blocking load: too small for cp.async)
    preload_scales: bool = True
    # where no scale rows are preloaded: each step's row (and zero row) is loaded one step ahead
    # into registers, so its latency hides under the step before (triton_kernels.py PREFETCH)
    prefetch_scales: bool = False

    def __post_init__(self):
        check_triton_blocks(self, ("block_m", "block_n", "block_k"))
        if not isinstance(self.split_k, int) or not 0 <= self.split_k <= MAX_SPLIT_K:
            raise ValueError(f"split_k={self.split_k!r} must be an int in [0, {MAX_SPLIT_K}] (0 = auto)")
        for name in ("scale_after_dot", "preload_scales", "prefetch_scales"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a bool")

    def as_list(self) -> list:
        return [self.block_m, self.block_n, self.block_k, self.split_k, self.num_warps, self.num_stages,
                int(self.scale_after_dot), int(self.preload_scales), int(self.prefetch_scales)]

    @classmethod
    def from_list(cls, values: list) -> "Int4Blocks":
        *tiles, after, preload, prefetch = values
        return cls(*tiles, scale_after_dot=bool(after), preload_scales=bool(preload),
                   prefetch_scales=bool(prefetch))


def default_blocks(rows: int, dtype: torch.dtype, *, capability: Optional[tuple] = None) -> Int4Blocks:
    """Default config for ``rows`` = M. capability None is the interpreter (few, large steps).
    GPU picks are compiled for sm_90 without spills by tests/test_int4.py."""
    if capability is None:
        return Int4Blocks(max(16, min(64, triton.next_power_of_2(rows))), 64, 128, 1, 4, 1)
    if dtype == torch.float32:  # ieee fp32 dots on FMA units: modest tiles
        return Int4Blocks(16 if rows <= 16 else 32, 64, 32, 0, 4, 2)
    if rows <= 16:  # decode: GEMV-style, bound by the 0.5 B/weight stream; split-K fills the SMs
        if capability[0] == 9:  # exact codes by inline PTX, the scale after the dot, scale rows
            # per step: 14.1-15.3 us at nano1's 2048->9984 and 9984->2048 (1, 16 rows) against
            # 21.0-24.0 for the tiles below, 8.7-8.8 against 9.4-9.6 at 2048->2048 (H200 sweep,
            # benchmarks/results/sweep-nvidia-h200-20261127T184547Z.json; every decode candidate
            # passed the GPU test against float64 in that call). Other GPUs: not timed
            return Int4Blocks(16, 64, 128, 0, 4, 4, scale_after_dot=True, preload_scales=False)
        return Int4Blocks(16, 64, 128, 0, 4, 4)
    if rows <= 64:
        return Int4Blocks(64, 64, 128, 0, 4, 3)
    return Int4Blocks(128, 128, 64, 1, 8, 3)


def candidate_blocks(rows: int, dtype: torch.dtype, *, capability: tuple = (9, 0)) -> list[Int4Blocks]:
    """Autotuning candidates for ``rows`` = M on a GPU: ``default_blocks`` first, then a few
    tile / warps / stages neighbours (spills, if any, show in benchmarks.compile_report)."""
    base = default_blocks(rows, dtype, capability=tuple(capability))
    if rows <= 16:
        # (16, 32, 128) was the slowest on the H200 sweep at every shape and (16, 64, 64) within
        # 5% of the default; the default with the scale rows loaded per step measures what
        # preloading them gains
        plain = dataclasses.replace(base, scale_after_dot=False, preload_scales=True)  # codes by shifts and masks
        more = [Int4Blocks(16, 128, 128, 0, 4, 4), dataclasses.replace(plain, preload_scales=False)]
        if dtype != torch.float32:  # the tiles with exact codes (PTX) and the scale after the dot:
            # 243 SASS instructions a 64-code step on sm_90 (322 preloaded) where the plain tiles
            # take 531 (628); sm_90's default is one of these
            more[:0] = [plain, dataclasses.replace(plain, scale_after_dot=True),
                        dataclasses.replace(plain, scale_after_dot=True, preload_scales=False)]
            # and 8 K splits whatever the shape: Nsight saw the default at 14 % achieved occupancy
            # and 11 % of DRAM bandwidth at 2048->9984 (2 splits, 312 programs of 4 warps: too
            # few loads in flight); 8 splits make 1248 programs there (untimed)
            more.append(dataclasses.replace(plain, scale_after_dot=True, preload_scales=False, split_k=8))
            # the per-step scale row is a blocking load each step (too small for cp.async):
            # the same tiles with it issued a step ahead, at the default split and at 8 splits
            # (untimed). (16, 128, 128) was the slowest decode tile at every shape of the H100
            # sweep (sweep-nvidia-h100-80gb-hbm3-20261127T215735Z.json: 10.6-24.3 us)
            ahead = dataclasses.replace(plain, scale_after_dot=True, preload_scales=False, prefetch_scales=True)
            more = [b for b in more if b.block_n != 128] + [ahead, dataclasses.replace(ahead, split_k=8)]
            # and with 8 stages: nano1's decode splits are 2-9 K steps, so a program has all
            # (or all but one) of its packed tiles in flight at once, one DRAM round trip
            # where 4 stages made two or three; 57 KB of shared memory, 4 programs an SM, so
            # every split plan here (<= 312 programs) is one wave on 132 SMs (untimed)
            more.append(dataclasses.replace(ahead, num_stages=8))
    else:
        more = [Int4Blocks(128, 64, 64, 1, 4, 3), Int4Blocks(64, 128, 64, 1, 4, 4),
                Int4Blocks(128, 256, 64, 1, 8, 3)]
    return [base] + [b for b in more if b != base]


def _capability(t: torch.Tensor) -> Optional[tuple]:
    if triton_interpreting() or t.device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(t.device)


def _sm_count(t: torch.Tensor) -> int:
    if t.device.type != "cuda":
        return 4  # interpreter: a few programs along K still exercise the split path
    return torch.cuda.get_device_properties(t.device).multi_processor_count


def split_plan(m: int, n: int, k: int, block_k: int, blocks: Int4Blocks, sms: int) -> tuple[int, int]:
    """(split_k, k_per_split): split_k 0 aims at ~2 waves of programs, >= 2 K steps each."""
    k_blocks = k // block_k
    split = blocks.split_k
    if split == 0:
        tiles = triton.cdiv(m, blocks.block_m) * triton.cdiv(n, blocks.block_n)
        split = max(1, min(triton.cdiv(2 * sms, tiles), k_blocks // 2, MAX_SPLIT_K))
    split = max(1, min(split, k_blocks))
    per = triton.cdiv(k_blocks, split)
    return triton.cdiv(k_blocks, per), per * block_k  # no empty splits


MAX_PRELOAD_GROUPS = 16  # [16, block_n] fp32 scale rows (and zeros) held in registers


def preload_groups(per: int, block_k: int, group_size: int, split: int, blocks: Int4Blocks) -> int:
    """The kernel's PRELOAD_GROUPS: a power of two covering the group rows one split's K range
    (``per`` columns starting at a multiple of ``block_k``) can touch, or 0 for the per-step
    loads (no split, preloading off, or more than MAX_PRELOAD_GROUPS rows)."""
    if split == 1 or not blocks.preload_scales:
        return 0
    rows = triton.cdiv(group_size - block_k + per, group_size)  # the worst start inside a group
    rows = triton.next_power_of_2(rows)
    return rows if rows <= MAX_PRELOAD_GROUPS else 0


# x dtype -> (bits of MAGIC in that dtype, MAGIC): MAGIC | q is MAGIC + q exactly for q < 16
_MAGIC = {torch.bfloat16: (0x4300, 128.0), torch.float16: (0x6400, 1024.0)}


def _scale_consts(dtype, blocks: Int4Blocks) -> dict:
    """The kernel's SCALE_AFTER_DOT constexprs (all three always: an ahead-of-time signature
    must name every constexpr); refuses fp32 x (its codes would not be exact)."""
    if not blocks.scale_after_dot:
        return dict(SCALE_AFTER_DOT=False, MAGIC_BITS=0, MAGIC=0.0, ASM=False)
    if dtype not in _MAGIC:
        raise ValueError(f"blocks: scale_after_dot needs bf16 or fp16 x, got {dtype}")
    bits, magic = _MAGIC[dtype]
    # inline PTX for the nibbles when compiled (aot_kernels builds with the real JIT)
    return dict(SCALE_AFTER_DOT=True, MAGIC_BITS=bits, MAGIC=magic, ASM=not triton_interpreting())


def _dot_precision(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


def _int4_matmul(x, packed_w, scales, zeros, group_size: int, blocks: Int4Blocks) -> torch.Tensor:
    scale_consts = _scale_consts(x.dtype, blocks)
    k = x.shape[-1]
    n = packed_w.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    packed_w, scales = packed_w.contiguous(), scales.contiguous()
    zeros = None if zeros is None else zeros.contiguous()
    bk = min(blocks.block_k, group_size)
    split, per = split_plan(m, n, k, bk, blocks, _sm_count(x))
    out_shape = (*x.shape[:-1], n)
    if m == 0:
        return x.new_zeros(out_shape)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, blocks.block_m), triton.cdiv(n, blocks.block_n), split)
    preload = preload_groups(per, bk, group_size, split, blocks)
    partials = y if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    locks = _locks(x.device, grid[0] * grid[1]) if split > 1 else y
    triton_kernels._int4_matmul_kernel[grid](
        x2, packed_w, scales, scales if zeros is None else zeros, y, partials, locks,
        x2.stride(0), packed_w.stride(0), scales.stride(0),
        m, n, k, per,
        GROUP=group_size, HAS_ZEROS=zeros is not None, SPLIT_K=split,
        BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_K=bk,
        DOT_PRECISION=_dot_precision(x.dtype), **scale_consts,
        PRELOAD_GROUPS=preload, PREFETCH=blocks.prefetch_scales and preload == 0,
        num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    LAUNCHES["_int4_matmul_kernel"] += 1
    return y.reshape(out_shape)


_LOCKS: dict = {}


def _locks(device: torch.device, tiles: int) -> torch.Tensor:
    """Zeroed int32 arrival counters for the split-K reduction, one buffer per (device,
    stream): each launch leaves its counters at 0, so the buffer is zeroed once. Launches on
    one stream run in order; another stream gets its own buffer."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _LOCKS.get(key)
    if buf is None or buf.numel() < tiles:
        buf = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
        _LOCKS[key] = buf
    return buf


@torch.library.custom_op("gemini_kernels::int4_matmul", mutates_args=())
def int4_matmul_op(x: torch.Tensor, packed_w: torch.Tensor, scales: torch.Tensor,
                   zeros: Optional[torch.Tensor], group_size: int, blocks: list[int]) -> torch.Tensor:
    """y [..., out]; ``blocks`` = Int4Blocks.as_list()."""
    return _int4_matmul(x, packed_w, scales, zeros, group_size, Int4Blocks.from_list(blocks))


@int4_matmul_op.register_fake
def _(x, packed_w, scales, zeros, group_size, blocks):
    return x.new_empty((*x.shape[:-1], packed_w.shape[0]))


def int4_matmul_triton(x, packed_w, scales, zeros, group_size, *, blocks=None):
    """x @ dequant(W).T on validated arguments (``kernels.torch_ops.int4_matmul``); forward only.
    ``blocks``: None (``default_blocks``), an Int4Blocks, or "autotune" (the fastest
    ``candidate_blocks`` of this problem class, timed on its first call: triton_autotune.py)."""
    rows = x.numel() // max(1, x.shape[-1])
    if blocks is None:
        blocks = default_blocks(rows, x.dtype, capability=_capability(x))
    elif blocks == "autotune":
        from .triton_autotune import autotuned_blocks

        x2 = x.reshape(-1, x.shape[-1])
        x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
        blocks = autotuned_blocks(x2, packed_w.contiguous(), scales.contiguous(),
                                  None if zeros is None else zeros.contiguous(), int(group_size))
    elif not isinstance(blocks, Int4Blocks):
        raise ValueError(f"blocks must be None, an Int4Blocks or 'autotune', got {blocks!r}")
    return int4_matmul_op(x, packed_w, scales, zeros, int(group_size), blocks.as_list())


# --- ahead-of-time compile support ---------------------------------------------------------

def aot_kernels(dtype=torch.float16, *, rows: int = 16, group_size: int = 128, asymmetric: bool = False,
                scale_dtype=torch.float16, capability=(9, 0), blocks: Optional[Int4Blocks] = None) -> dict:
    """name -> AotKernel of the launch for ``rows`` on ``capability`` (``blocks`` overrides
    ``default_blocks``), specialized as the JIT would for contiguous 16-byte aligned tensors,
    strides, N, K and K_PER_SPLIT divisible by 16 (M is not)."""
    fn = jit_module(triton_kernels)._int4_matmul_kernel
    blocks = blocks or default_blocks(rows, dtype, capability=tuple(capability))
    split = 1 if rows > 16 and blocks.split_k == 1 else 2  # SPLIT_K only matters as 1 or > 1
    consts = dict(GROUP=group_size, HAS_ZEROS=asymmetric, SPLIT_K=split, BLOCK_M=blocks.block_m,
                  BLOCK_N=blocks.block_n, BLOCK_K=min(blocks.block_k, group_size),
                  DOT_PRECISION=_dot_precision(dtype),
                  **{**_scale_consts(dtype, blocks), "ASM": blocks.scale_after_dot},  # GPU code
                  # split launches at their most registers: the largest preloaded scale tile
                  PRELOAD_GROUPS=MAX_PRELOAD_GROUPS if split > 1 and blocks.preload_scales else 0,
                  PREFETCH=blocks.prefetch_scales and not (split > 1 and blocks.preload_scales))
    sty = "*" + triton_dtype(scale_dtype)
    ptrs = {"X": "*" + triton_dtype(dtype), "QW": "*u8", "S": sty, "Z": sty,
            "Y": "*" + triton_dtype(dtype), "P": "*" + triton_dtype(dtype) if split == 1 else "*fp32",
            "LOCKS": "*" + triton_dtype(dtype) if split == 1 else "*i32"}
    k = _aot_kernel(fn, pointers=ptrs, constexprs=consts, num_warps=blocks.num_warps,
                    num_stages=blocks.num_stages)
    attrs = dict(k.attrs)
    for name in ("N", "K", "K_PER_SPLIT"):
        attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return {"_int4_matmul_kernel": k._replace(attrs=attrs)}


def aot_kernel(dtype=torch.float16, *, rows: int, group_size: int = 128, asymmetric: bool = False,
               scale_dtype=torch.float16, capability=(9, 0), blocks: Optional[Int4Blocks] = None):
    """``aot_kernels(...)``'s one kernel as the tuple (fn, signature, constexprs, attrs,
    num_warps, num_stages); feed to triton.compile(ASTSource(...))."""
    k = aot_kernels(dtype, rows=rows, group_size=group_size, asymmetric=asymmetric,
                    scale_dtype=scale_dtype, capability=capability, blocks=blocks)["_int4_matmul_kernel"]
    return k.fn, k.signature, k.constexprs, k.attrs, k.num_warps, k.num_stages
