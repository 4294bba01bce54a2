"""Triton flash attention for PyTorch: block sizes, launchers and the differentiable op.

    attention_triton(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                     q_segment_ids=None, kv_segment_ids=None, blocks=None, q_end=None)

q_end (bidirectional image blocks: each query's last visible key, int32 [B, Sq]) runs on the
pointer tiles only; ``check_bidirectional_blocks`` refuses Gluon / TMA blocks, and "autotune"
times only the pointer-tile candidates (``pointer_tiles``).

Layers (device code in ``triton_kernels.py``):
  ``TritonAttentionBlocks`` / ``default_blocks``  tunables and their per-device defaults;
  ``_flash_fwd`` / ``_flash_bwd``                 allocate outputs, pick the grid, launch;
  ``gemini_kernels::flash_attention_fwd|_bwd``    ``torch.library`` custom ops with fake
                                                  kernels and autograd, so torch.compile traces them.
Arguments arrive validated from ``kernels.torch_ops.attention``. ``LAUNCHES`` counts kernel
launches by name (tests assert the Triton path really ran). ``aot_kernels`` gives the exact
kernels and specializations the launchers use, for ahead-of-time compiles without a GPU
(in a process with TRITON_INTERPRET=0; see ``tests/test_triton_aot.py``).
"""
import collections
import dataclasses
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .._aot import aot_kernel, check_triton_blocks, d_strides  # noqa: E402
from .._platform import compiled_sm_count, triton_interpreting  # noqa: E402
from . import triton_kernels  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()  # kernel name -> launches in this process


@dataclasses.dataclass(frozen=True)
class TritonAttentionBlocks:
    """Tile sizes of one pass: block_m folded q rows x block_n keys, plus launch options.

    ``tma`` (sm_90+): the tiles streamed in the inner loops (k/v in the forward and dq
    passes, q/dO in the dk/dv pass; plus q and o in the forward) move through 4-D tensor
    descriptors (the tensor memory accelerator) instead of pointer tensors, which frees the
    registers pointer arithmetic and masks take; it needs the shapes ``tma_problem`` accepts. (Triton
    3.6's automatic warp specialization changes nothing on sm_90, so it is not offered; nor is
    issuing the next tile's QK^T before this tile's softmax, FA3's intra-warpgroup overlap:
    Triton 3.6 waits on that wgmma right after issuing it, WARPGROUP.DEPBAR in the SASS.)
    ``gluon`` (forward, sm_90): the Gluon kernel instead (``gluon_attention.py``), which has
    what Triton's compiler does not give there: a TMA producer warp and consumer warpgroups
    (1), the next QK^T issued before this softmax (2), FA3's ping-pong of two warpgroups (3).
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    tma: bool = False
    dkdv_splits: int = 0  # backward: programs per key block over interleaved row blocks; 0 = auto
    # backward: the dQ pass's own tile (0 = block_m / block_n). At head_dim 256 on sm_90 the
    # two passes reach wgmma with different tiles (dK/dV: 64 keys; dQ: 64 rows), and a tile
    # both could share spills: benchmarks.compile_report lists each candidate's passes
    dq_block_m: int = 0
    dq_block_n: int = 0
    # backward: 2 = dV and dK in two launches of the dk/dv kernel, one fp32 accumulator each
    # (the dV pass skips dP and dS; the dK pass skips P^T dO): one more score recompute, but
    # at head_dim 256 128-key tiles fit, so each sm_90 warpgroup owns 64 keys where the
    # shared pass's 64-key tile makes both warpgroups compute the same score tiles
    dkdv_passes: int = 1
    # backward: dQ by fp32 atomic adds from the dK/dV pass (FlashAttention 2/3's five GEMMs)
    # instead of its own kernel (seven); dq_block_m / dq_block_n must stay 0. Not bitwise
    # deterministic: the adds land in a different order each run
    dq_atomic: bool = False
    # backward, with dq_atomic: the adds as one bulk reduction per tile through a tensor
    # descriptor over dQ (sm_90's cp.reduce.async.bulk, FlashAttention 3's dQ path): no
    # per-element pointers or atomics in the loop; needs q tiles of whole positions (G a power
    # of two dividing block_m), as ``tma``
    dq_tma: bool = False
    # forward, sm_90: 0 = the Triton kernel; 1/2/3 = the Gluon kernel's modes (gluon_attention.MODES):
    # block_m 128, block_n 32, 64 or 128, num_warps 8 (4 for ping-pong: one consumer warpgroup is
    # the default partition), num_stages the K/V ring depth, tma False (it has its own)
    gluon: int = 0
    # backward, sm_90: the dK/dV pass(es) in Gluon (gluon_bwd_kernels.py: a TMA producer warp
    # streaming q and dO row blocks, 8 warps owning block_n = 128 keys); block_m rows a step
    # (32 or 64), num_stages the ring depth, dkdv_passes and dkdv_splits as for Triton; dQ from
    # the Triton dQ pass on its own pointer tile (dq_block_m, dq_block_n, both set), or with
    # dq_atomic from the Gluon dK pass (dQ^T = K^T dS^T, added into an fp32 dQ by atomics)
    gluon_dkdv: bool = False
    # backward: one dK/dV program per query head of the group and key block (FlashAttention
    # 3's GQA backward), looping over that head's positions, its partial dK/dV (fp32) summed
    # over the group by the launcher, where the default folds the group into each row block.
    # What it changes: the programs running together stream one head's q and dO, which stay
    # in L2 (MQA at 16k, hd128: 8 MB against 128 MB for all 16 heads; the H100's Nsight
    # Compute gave the folded Gluon dK/dV pass a 35-39 % L2 hit rate, and the folded dK/dV
    # pass ran at 245 TFLOP/s where the dQ pass, whose K/V stay in L2, ran at 557).
    # Pointer tiles or the Gluon pass (gluon_dkdv: q/dO boxes [1, block_m, 1, D] of one head):
    # tma and dq_tma off; dkdv_splits 0 (the group is the split)
    dkdv_per_head: bool = False

    def __post_init__(self):
        check_triton_blocks(self, ("block_m", "block_n"))
        check_triton_blocks(self, tuple(n for n in ("dq_block_m", "dq_block_n") if getattr(self, n) != 0))
        if not isinstance(self.tma, bool):
            raise ValueError(f"tma={self.tma!r} must be a bool")
        if not isinstance(self.dkdv_splits, int) or not 0 <= self.dkdv_splits <= MAX_DKDV_SPLITS:
            raise ValueError(f"dkdv_splits={self.dkdv_splits!r} must be an int in [0, {MAX_DKDV_SPLITS}]")
        if self.dkdv_passes not in (1, 2) or isinstance(self.dkdv_passes, bool):
            raise ValueError(f"dkdv_passes={self.dkdv_passes!r} must be 1 (dK and dV together) or 2 (apart)")
        if not isinstance(self.dq_atomic, bool):
            raise ValueError(f"dq_atomic={self.dq_atomic!r} must be a bool")
        if not isinstance(self.dq_tma, bool) or (self.dq_tma and not self.dq_atomic):
            raise ValueError(f"dq_tma={self.dq_tma!r} must be a bool, True only with dq_atomic=True")
        if self.gluon not in (0, 1, 2, 3) or isinstance(self.gluon, bool):
            raise ValueError(f"gluon={self.gluon!r} must be 0 (the Triton forward) or a Gluon mode 1, 2 or 3")
        if self.gluon:
            want_warps = 4 if self.gluon == 3 else 8
            if (self.block_m, self.num_warps) != (128, want_warps) or self.block_n not in (32, 64, 128):
                raise ValueError(f"gluon={self.gluon} takes block_m=128, block_n 32, 64 or 128 and num_warps="
                                 f"{want_warps}, got {self.block_m}, {self.block_n}, {self.num_warps}")
            if self.tma or self.num_stages < 2:
                raise ValueError(f"gluon={self.gluon} takes tma=False (its own descriptors) and num_stages >= 2 "
                                 f"(the K/V ring), got tma={self.tma}, num_stages={self.num_stages}")
        if not isinstance(self.gluon_dkdv, bool):
            raise ValueError(f"gluon_dkdv={self.gluon_dkdv!r} must be a bool")
        if self.gluon_dkdv and ((self.block_n, self.num_warps) != (128, 8) or self.block_m not in (32, 64)
                                or self.tma or self.dq_tma or self.gluon or self.num_stages < 2
                                or not (self.dq_atomic or (self.dq_block_m and self.dq_block_n))):
            raise ValueError(f"gluon_dkdv=True takes block_n=128, num_warps=8, block_m 32 or 64, num_stages >= 2, "
                             f"tma, dq_tma and gluon off, and either dq_atomic (dS K added into dQ by the dK "
                             f"pass) or the Triton dQ pass's own tile (dq_block_m, dq_block_n), got {self}")
        if not isinstance(self.dkdv_per_head, bool):
            raise ValueError(f"dkdv_per_head={self.dkdv_per_head!r} must be a bool")
        if self.dkdv_per_head and (self.tma or self.dq_tma or self.dkdv_splits):
            raise ValueError(f"dkdv_per_head=True takes pointer tiles (or the Gluon pass's own) and splits over the "
                             f"group's heads: tma and dq_tma off and dkdv_splits=0, got {self}")
        if self.dq_atomic and (self.dq_block_m or self.dq_block_n):
            raise ValueError(f"dq_atomic=True has no dQ pass to tile: dq_block_m and dq_block_n must be 0, "
                             f"got {self.dq_block_m} and {self.dq_block_n}")

    def dq_blocks(self) -> "TritonAttentionBlocks":
        """The blocks the dQ pass launches with (its own tile where one is set)."""
        return dataclasses.replace(self, block_m=self.dq_block_m or self.block_m,
                                   block_n=self.dq_block_n or self.block_n, dq_block_m=0, dq_block_n=0,
                                   gluon_dkdv=False)

    def as_list(self) -> list:
        return [self.block_m, self.block_n, self.num_warps, self.num_stages, int(self.tma),
                self.dkdv_splits, self.dq_block_m, self.dq_block_n, self.dkdv_passes, int(self.dq_atomic),
                int(self.dq_tma), self.gluon, int(self.gluon_dkdv), int(self.dkdv_per_head)]

    @classmethod
    def from_list(cls, values: list) -> "TritonAttentionBlocks":
        m, n, w, st, tma, splits, dq_m, dq_n, passes, dq_atomic, dq_tma, gluon, gluon_dkdv, per_head = values
        return cls(m, n, w, st, bool(tma), splits, dq_m, dq_n, passes, bool(dq_atomic), bool(dq_tma), gluon,
                   bool(gluon_dkdv), bool(per_head))

    def dkdv_pass_flags(self) -> tuple:
        """(DO_DK, DO_DV, DO_DQ) of each launch of the dk/dv kernel, in launch order."""
        if self.dkdv_passes == 1:
            return ((True, True, self.dq_atomic),)
        return ((False, True, False), (True, False, self.dq_atomic))


MAX_DKDV_SPLITS = 16


def dkdv_splits(programs: int, row_blocks: int, sm_count: Optional[int]) -> int:
    """Programs per key block for the dk/dv pass, from the programs it has without splitting
    (B * KVH * key blocks) and the folded row blocks each one loops over.

    GPU: aim for two waves (2 * sm_count programs), each split keeping >= 4 row blocks, so MQA
    and small batches fill the device and the causal tail is spread. Interpreter (sm_count
    None): 2 where there are >= 2 row blocks, so the CPU tests run the split path.
    """
    if sm_count is None:
        return 2 if row_blocks >= 2 else 1
    want = triton.cdiv(2 * sm_count, max(programs, 1))
    return max(1, min(want, row_blocks // 4, MAX_DKDV_SPLITS))


def tma_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: TritonAttentionBlocks):
    """Why the TMA forward cannot run this problem with ``blocks``, or None when it can.

    Descriptors need unit head_dim strides, 16-byte aligned bases and other strides, and a
    q tile of whole positions: the group size G = H // KVH a power of two dividing block_m.
    """
    g = q.shape[2] // k.shape[2]
    if g & (g - 1) or blocks.block_m % g:
        return f"the group size {g} must be a power of two dividing block_m={blocks.block_m}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            return f"{name} must have a unit head_dim stride, got strides {tuple(t.stride())}"
        strides = _tma_strides(t)[:-1]
        if t.data_ptr() % 16 or any(s <= 0 or s * t.element_size() % 16 for s in strides):
            return (f"{name}'s base and strides must be positive and 16-byte aligned, got strides "
                    f"{tuple(t.stride())}")
    return None


def _tma_strides(t: torch.Tensor) -> list:
    """t's strides for a descriptor: a size-1 dim is never stepped, so any aligned stride does
    (torch gives such dims arbitrary strides, 0 after an expand)."""
    return [s if n > 1 else 16 // t.element_size() for n, s in zip(t.shape, t.stride())]


def default_blocks(head_dim: int, dtype: torch.dtype, *, backward: bool = False,
                   capability: Optional[tuple] = None) -> TritonAttentionBlocks:
    """Default tiles for one pass. ``capability`` None means the CPU interpreter.

    GPU picks are checked by ``tests/test_triton_aot.py`` to compile without register spills
    on sm_80 and sm_90 at fp32/fp16/bf16 and head dims 64-256 (and, 16-bit on sm_90, to use
    wgmma); throughput tuning happens on a device.
    """
    if capability is None:  # interpreter: fewer, larger numpy steps are faster; keep several blocks
        return TritonAttentionBlocks(32, 32, 4, 1)
    if dtype == torch.float32:  # ieee fp32 dots run on FMA units; larger tiles spill on sm_90
        if backward:  # 1 stage spilled the split dk/dv pass (ptxas capped it at 80 registers)
            return TritonAttentionBlocks(16, 16, 8, 2)
        if capability[0] >= 9:
            return TritonAttentionBlocks(32, 16, 8, 2)
        return TritonAttentionBlocks(32, 32, 8, 2)  # sm_80: 32x16 spilled at head_dim 80-128
    if backward:
        if head_dim <= 64:  # sm_80: 64 keys x 64 rows spilled 12 B in the dk/dv pass
            return TritonAttentionBlocks(64, 64, 4, 2) if capability[0] >= 9 else TritonAttentionBlocks(64, 32, 4, 2)
        if head_dim <= 128:
            return TritonAttentionBlocks(64, 64, 8, 2)
        return TritonAttentionBlocks(32, 32, 8, 1)  # dk, dv and k, v of 256 columns: small tiles
    if capability[0] >= 9:  # wgmma: 128 rows = two warpgroups of 64
        if head_dim <= 64:
            return TritonAttentionBlocks(128, 128, 8, 3)
        if head_dim <= 128:
            return TritonAttentionBlocks(128, 64, 8, 3)
        return TritonAttentionBlocks(128, 32, 8, 2)
    if head_dim <= 64:
        return TritonAttentionBlocks(128, 64, 8, 2)
    if head_dim <= 128:
        return TritonAttentionBlocks(128, 32, 8, 3)
    return TritonAttentionBlocks(64, 32, 8, 2)


# head_dim range whose default backward takes TMA tiles on sm_90 when the problem allows them:
# measured on an H200 (benchmarks/results/sweep-nvidia-h200-20261126T215348Z.json, MQA causal
# bf16, 16 heads, 16k tokens, head_dim 128): forward+backward 16.2 ms with (64, 64, 8, 3, TMA)
# against 19.6 ms with the pointer tiles (64, 64, 8, 2), the same gradients; no spills either
# way. Other head dims are not measured yet: they keep the pointer tiles.
TMA_BACKWARD_HEAD_DIMS = range(65, 129)


# sm_90, 16-bit, no window / softcap / segment ids: the defaults per head_dim, (forward, backward).
# Measured on an H200 (benchmarks/results/nvidia-h200-20261127T184133Z.json, MQA causal bf16,
# 16 heads, 8k-32k; the triton-autotune rows' candidates, each checked against the reference):
# forward at head_dim 128, the Gluon ping-pong 128 x 128 0.82 / 1.63 / 7.60 ms at 8k / 16k / 32k
# against the pointer default's 1.21 / 2.35 / 9.55; backward, the Gluon dK/dV pass adding dQ by
# atomics (FlashAttention 2/3's five GEMMs) 5.55 / 10.7 / 31.6 ms against the TMA default's 6.86 /
# 13.4 / 55.9. Head_dim 256 (nano1's 8 heads, 8k): the Gluon forward 0.38 ms against 0.82; the
# backward is the Triton dK/dV kernel in two passes (dV, then dK) adding dQ by atomics: forward +
# backward 4.62 ms on the H200 and 5.29 on an H100 against the Gluon dK/dV pass's 4.88 and 5.75
# (sweep-nvidia-h200-20261127T184547Z.json, sweep-nvidia-h100-80gb-hbm3-20261127T215735Z.json).
# Not bitwise deterministic (the dQ adds land in any order, as in FlashAttention's default);
# explicit ``blocks`` (e.g. ``default_blocks(..., backward=True)``) keep a deterministic backward.
# With features (the Gluon modes spill with window + softcap or segment ids:
# benchmarks/report/compile_report.md) and at other head dims (not timed), the Triton tiles of
# ``default_blocks``.
SM90_DEFAULTS = {
    128: (TritonAttentionBlocks(128, 128, 4, 2, gluon=3),
          TritonAttentionBlocks(32, 128, 8, 2, gluon_dkdv=True, dq_atomic=True)),
    256: (TritonAttentionBlocks(128, 64, 4, 2, gluon=3),
          TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_atomic=True)),
}


def _sm90_default(q, k, v, capability: Optional[tuple], features: bool, backward: bool):
    """The sm_90 default for this problem (``SM90_DEFAULTS``), or None where it does not apply
    or the problem rules a Gluon entry out (``gluon_problem``: descriptors, group size)."""
    d = q.shape[-1]
    if (capability is None or capability[0] != 9 or q.dtype == torch.float32 or features
            or d not in SM90_DEFAULTS):
        return None
    from . import gluon_attention

    blocks = SM90_DEFAULTS[d][int(backward)]
    if backward:
        if not blocks.gluon_dkdv:  # the Triton pointer kernels take any layout
            return blocks
        why = gluon_attention.gluon_bwd_problem(q, k, v, blocks, window=None, softcap=None, segments=False,
                                                capability=capability)
    else:
        why = gluon_attention.gluon_problem(q, k, v, blocks, causal=True, window=None, softcap=None,
                                            segments=False, capability=capability)
    return blocks if why is None else None


def default_forward_blocks(q, k, v, capability: Optional[tuple], *, features: bool = False) -> TritonAttentionBlocks:
    """The forward's default tiles for these inputs: the Gluon kernel where ``SM90_DEFAULTS``
    applies (sm_90, 16-bit, head_dim 128 or 256, ``features`` False: no window, softcap or
    segment ids) and the problem allows it, else ``default_blocks``."""
    gluon = _sm90_default(q, k, v, capability, features, backward=False)
    return gluon or default_blocks(q.shape[-1], q.dtype, capability=capability)


def default_backward_blocks(q, k, v, capability: Optional[tuple], *, features: bool = False) -> TritonAttentionBlocks:
    """The backward's default tiles for these inputs: ``SM90_DEFAULTS``' backward (the Gluon
    dK/dV pass at head_dim 128, the Triton two-pass tile at 256) where it applies (as
    ``default_forward_blocks``); else ``default_blocks(backward=True)``,
    or its TMA version where measured faster (``TMA_BACKWARD_HEAD_DIMS``, sm_90+, 16-bit) and the
    problem allows descriptors (``tma_problem``); a problem neither can take keeps the pointer
    tiles, so no input that ran before is refused."""
    gluon = _sm90_default(q, k, v, capability, features, backward=True)
    if gluon is not None:
        return gluon
    d = q.shape[-1]
    base = default_blocks(d, q.dtype, backward=True, capability=capability)
    if (capability is not None and capability[0] >= 9 and q.dtype != torch.float32
            and d in TMA_BACKWARD_HEAD_DIMS):
        tma = tma_blocks(base, backward=True)
        if tma_problem(q, k, v, tma) is None:
            return tma
    return base


def tma_blocks(blocks: TritonAttentionBlocks, *, backward: bool = False) -> TritonAttentionBlocks:
    """``blocks`` with TMA tiles. The backward takes a 3-stage pipeline where ``blocks`` has
    2: Triton 3.6's ptxas crashes (SIGSEGV) compiling the TMA dQ pass with 2 stages."""
    stages = 3 if backward and blocks.num_stages == 2 else blocks.num_stages
    return dataclasses.replace(blocks, tma=True, num_stages=stages)


def candidate_blocks(head_dim: int, dtype: torch.dtype, *, backward: bool = False,
                     capability: tuple = (9, 0)) -> list[TritonAttentionBlocks]:
    """Autotuning candidates for one pass on a GPU: ``default_blocks`` first, then a few
    neighbours (tile shape, warps, pipeline depth). Some may spill; the compile report
    (``benchmarks.compile_report``) shows which, a device benchmark picks among the rest."""
    base = default_blocks(head_dim, dtype, backward=backward, capability=tuple(capability))
    if dtype == torch.float32:
        more = [TritonAttentionBlocks(16, 16, 4, 1), TritonAttentionBlocks(16, 16, 8, 2),
                TritonAttentionBlocks(32, 32, 8, 1)]
    elif backward:
        more = [TritonAttentionBlocks(64, 32, 4, 2), TritonAttentionBlocks(32, 64, 4, 2),
                TritonAttentionBlocks(128, 64, 8, 2)]
        if capability[0] >= 9:
            # sm_90, 8 warps: Triton gives a score tile feeding another dot one warpgroup per 64
            # rows, so a 64-key dK/dV tile (or a 64-row dQ tile) has both warpgroups compute the
            # same scores. 128-key / 128-row tiles give each warpgroup its own 64.
            if head_dim <= 64:
                more = [tma_blocks(base, backward=True), *more[:2]]
            elif head_dim <= 128:  # the measured TMA default (TMA_BACKWARD_HEAD_DIMS), the
                # pointer 64x32 that beat it on the H200 sweep (4 warps, spills 36 B), 128-key
                # dK/dV with 128-row dQ tiles, 32 rows a step (TMA, no spills; wgmma N = 32),
                # and FlashAttention 2/3's five GEMMs: dQ by atomics from the 128-key dK/dV
                # pass (32 rows a step: 253 registers, no spills, 637 loop instructions per
                # 4096 scores where the TMA default's two kernels take 665 + 537), by pointer
                # atomics or by one bulk tensor reduction a tile (dq_tma: 247 registers, 525
                # instructions). Dropped: 64 rows a step with a 128-row dQ (spills 12 B).
                # And the Gluon dK/dV pass (gluon_bwd_kernels.py: a TMA producer warp streaming
                # 64-row q/dO blocks to 8 warps owning 128 keys; 131 KB, no spills) with the
                # pointer 64x64 dQ pass, in place of a 128-row TMA dQ tile none has timed; and
                # that pass forming dQ^T = K^T dS^T itself (FA2's five GEMMs in Gluon: dS^T
                # through 16 KB of shared memory, v4 fp32 atomics; 32 rows a step: no spills,
                # 123 KB; 64 spill 20 B), in place of the Triton pass's pointer atomics (the
                # bulk-reduction form of the same five GEMMs stays: 525 loop instructions to 637).
                # First (untimed; a deadline-cut sweep reaches them), the dK/dV pass per query
                # head (dkdv_per_head: each program streams one head's q and dO, which stay in
                # L2, where every folded tile below streams the whole group's; sm_90 AOT at MQA
                # G=16): with the 64x32 4-warp tile both passes share (the H100's fastest dQ
                # pass, 2.96 ms at 16k; 255 registers, no spills), and sm_90's default (the Gluon
                # pass with dQ by atomics) per query head: [1, 32, 1, D] TMA boxes of one head
                # (168 registers at the launch cap, no spills, 123 KB of shared memory). Left
                # out (eight candidates at most): the Triton 128 x 32 form with dQ by atomics
                # (241 registers, no spills; tests/test_triton_aot.py compiles it).
                more = [TritonAttentionBlocks(64, 32, 4, 2, dkdv_per_head=True),
                        TritonAttentionBlocks(32, 128, 8, 2, gluon_dkdv=True, dq_atomic=True, dkdv_per_head=True),
                        tma_blocks(base, backward=True), more[0],
                        TritonAttentionBlocks(64, 128, 8, 2, dq_block_m=64, dq_block_n=64, gluon_dkdv=True),
                        TritonAttentionBlocks(32, 128, 8, 2, gluon_dkdv=True, dq_atomic=True),
                        TritonAttentionBlocks(32, 128, 8, 2, dq_atomic=True, dq_tma=True)]
            else:  # head_dim 256 (the nano1 profile, H200: the default backward is 195 of the
                # 363 ms of kernels of a train step): dK and dV in two passes of 128 keys (no
                # spills; one fp32 accumulator each), with 64-row dQ tiles (no spills, but both
                # warpgroups compute the same score tiles) or 128-row x 16-key ones (no
                # spills); or dQ by atomics from the dK pass (six GEMMs in all where those take
                # eight): 32 rows a step by pointer atomics (254 registers, 224 KB of shared
                # memory: it just fits), or 16 by bulk tensor reductions (dq_tma: 220 registers,
                # 180 KB, 462 loop instructions per 2048 scores where pointer atomics take 562;
                # 32 rows that way need 232 KB, over the 227 KB limit). Left out: a 128 x 32 dQ
                # (spills 24 B); the default's 32 x 32 mma.sync tiles through TMA; the shared
                # pass with 64 keys (wgmma) spills 248 B, the pointer 64x32 / 32x64 tiles
                # 0.9-8.6 KB; 64 rows a step do not fit (256 KB of shared memory, 2 stages).
                # The Gluon dK/dV passes too (two: dV, then dK; 32-row q/dO blocks streamed by a
                # TMA producer warp to 8 warps owning 128 keys; 131 and 197 KB, no spills), with
                # the 64 x 32 dQ tile, or with the dK pass adding dQ^T = K^T dS^T itself (v4 fp32
                # atomics; 221 KB, no spills), in place of the 128 x 16 dQ tile (16-key steps).
                # First (untimed), the two passes per query head (dkdv_per_head, as at head_dim
                # 128: nano1's 8 heads' q and dO at 8k are 64 MB folded, 8 MB a head) with the
                # 64x32 dQ tile (244 / 224 registers, no spills; with dQ by atomics the dK pass
                # spills 8 B, so not that).
                more = [TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_block_m=64, dq_block_n=32,
                                              dkdv_per_head=True),
                        TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_block_m=64, dq_block_n=32),
                        TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, gluon_dkdv=True, dq_atomic=True),
                        TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_atomic=True),
                        TritonAttentionBlocks(16, 128, 8, 2, dkdv_passes=2, dq_atomic=True, dq_tma=True),
                        TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_block_m=64, dq_block_n=32,
                                              gluon_dkdv=True)]
    else:
        more = [TritonAttentionBlocks(64, 64, 4, 3)]
        if capability[0] == 9 and head_dim in (64, 128):
            # the H200 sweep (MQA causal, 16 heads, 16k, hd128): the pointer default 460 TFLOP/s,
            # TMA 420-438, (64, 64, 4, 3) 405. In their place, the Gluon forward's ping-pong
            # (FA3's schedule) and its one-partition modes, 128 x 128 tiles, a 2-deep ring:
            # 0 spills, 240 registers a consumer thread, 164 KB of shared memory (sm_90 AOT).
            # Untimed: the autotuner checks each against the default before timing it.
            # And ping-pong with a 3-deep ring (224 KiB of the 227 the SM allows, no spills):
            # the H200 put the 2-deep one 1.08x cuDNN at 8k and 32k, short of #2's 1.1x (untimed)
            more = [TritonAttentionBlocks(128, 64, 8, 4, tma=True),
                    TritonAttentionBlocks(128, 128, 4, 2, gluon=3),
                    TritonAttentionBlocks(128, 128, 8, 2, gluon=2),
                    TritonAttentionBlocks(128, 128, 8, 2, gluon=1),
                    TritonAttentionBlocks(128, 64, 4, 3, gluon=3),
                    TritonAttentionBlocks(128, 128, 4, 3, gluon=3)]
        elif capability[0] == 9 and head_dim == 256:
            # the pointer default (128 x 32 mma tiles; 339 TFLOP/s in the H200's nano1 step) and
            # TMA 128 x 64, then the Gluon forward with 64-key tiles (197 KB of shared memory)
            # and 32-key ones in a 3-deep ring (164 KB): O leaves through shared memory and a
            # TMA store, so no mode spills at head_dim 256 (sm_90 AOT). Untimed.
            more = [TritonAttentionBlocks(128, 64, 8, 2, tma=True),
                    TritonAttentionBlocks(128, 64, 4, 2, gluon=3),
                    TritonAttentionBlocks(128, 64, 8, 2, gluon=1),
                    TritonAttentionBlocks(128, 32, 4, 3, gluon=3)]
        elif capability[0] >= 9:  # TMA frees the pointer registers: 128x128 tiles fit without spills
            more = [tma_blocks(base), *more]
            if head_dim <= 128:
                more[1:1] = [TritonAttentionBlocks(128, 128, 8, 2, tma=True),
                             TritonAttentionBlocks(128, 64, 8, 4, tma=True)]
            else:  # head_dim 256: 64-key tiles fit only with TMA (the pointer kernel spills 60 B)
                more[1:1] = [TritonAttentionBlocks(128, 64, 8, 2, tma=True)]
        else:
            more += [TritonAttentionBlocks(128, 64, 8, 2), TritonAttentionBlocks(128, 128, 8, 2),
                     TritonAttentionBlocks(128, 32, 4, 3)]
    return [base] + [b for b in more if b != base]


def _capability(t: torch.Tensor) -> Optional[tuple]:
    if triton_interpreting() or t.device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(t.device)


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _constexprs(head_dim, dtype, group, *, causal, window, softcap, segments, blocks,
                bidirectional=False):
    """Compile-time specialization shared by the launchers and the AOT helper."""
    return dict(
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim),
        BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
        CAUSAL=bool(causal or window is not None), HAS_WINDOW=window is not None,
        HAS_SOFTCAP=softcap is not None, HAS_SEGMENTS=bool(segments),
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        HAS_QEND=bool(bidirectional),
    )


def check_bidirectional_blocks(blocks) -> None:
    """Bidirectional blocks (q_end) run on the pointer tiles only: refuse, before any launch,
    explicit blocks that name the Gluon kernels or TMA tiles (the defaults pick pointer tiles;
    "autotune" times only the pointer-tile candidates, ``pointer_tiles``)."""
    if blocks is None or isinstance(blocks, str) and blocks == "autotune":
        return
    for b in (blocks if isinstance(blocks, tuple) else (blocks,)):
        if not isinstance(b, TritonAttentionBlocks):
            continue  # attention_triton refuses the type itself
        bad = [n for n in ("gluon", "gluon_dkdv", "tma", "dq_tma") if getattr(b, n)]
        if bad:
            raise ValueError(f"blocks: bidirectional_ids runs on the Triton pointer tiles only; "
                             f"{', '.join(f'{n}={getattr(b, n)}' for n in bad)} cannot take it, got {b}")


def pointer_tiles(candidates: list) -> list:
    """The candidates that can take q_end (no Gluon kernel, no TMA tile): autotuning with
    bidirectional ids times only these."""
    return [b for b in candidates if not (b.gluon or b.gluon_dkdv or b.tma or b.dq_tma)]


def _qend_args(q_end, dummy):
    """q_end's pointer and strides; a dummy pointer with zero strides when absent."""
    if q_end is None:
        return dummy, (0, 0)
    return q_end, tuple(q_end.stride())


def _segment_args(q_seg, kv_seg, dummy):
    """Segment pointers and strides; a dummy pointer with zero strides when absent."""
    if q_seg is None:
        return (dummy, dummy), (0, 0, 0, 0)
    return (q_seg, kv_seg), (*q_seg.stride(), *kv_seg.stride())


def _scalars(sq, skv, window, softcap, scale):
    # A window wider than any query-key distance is plain causal: clamp so it stays int32.
    w = 0 if window is None else min(int(window), sq + skv)
    return float(scale), 1.0 if softcap is None else float(softcap), w


def _flash_fwd(q, k, v, q_seg, kv_seg, *, causal, window, softcap, scale, blocks, q_end=None):
    """Forward launch -> (o [B, Sq, H, D] in q's dtype, lse [B * KVH, Sq * G] fp32, log2 domain).
    q_end: None, or int32 [B, Sq] each query's last visible key (bidirectional blocks)."""
    if q_end is not None:
        check_bidirectional_blocks(blocks)
    if blocks.gluon:
        from . import gluon_attention

        why = gluon_attention.gluon_problem(q, k, v, blocks, causal=causal, window=window, softcap=softcap,
                                            segments=q_seg is not None)
        if why is not None:
            raise ValueError(f"blocks: gluon={blocks.gluon} cannot run this problem: {why}")
        LAUNCHES["_gluon_attn_fwd_kernel"] += 1
        return gluon_attention.gluon_fwd(q, k, v, causal=causal, scale=scale, blocks=blocks, window=window,
                                         softcap=softcap, q_seg=q_seg, kv_seg=kv_seg)
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((b * kvh, sq * g), dtype=torch.float32, device=q.device)
    (qs, ks), seg_strides = _segment_args(q_seg, kv_seg, lse)
    qe, qe_strides = _qend_args(q_end, lse)
    meta = _constexprs(d, q.dtype, g, causal=causal, window=window, softcap=softcap,
                       segments=q_seg is not None, blocks=blocks, bidirectional=q_end is not None)
    descs = (None, None, None, None)
    if blocks.tma:
        _check_tma(q, k, v, blocks)
        descs = _descriptors(q, k, v, o, blocks)
        meta.update(TMA=True)
    grid = (triton.cdiv(sq * g, blocks.block_m), b * kvh)
    triton_kernels._attn_fwd_kernel[grid](
        q, k, v, o, lse, qs, ks, qe, *descs,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *seg_strides, *qe_strides,
        sq, skv, kvh, *_scalars(sq, skv, window, softcap, scale),
        **meta, num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    LAUNCHES["_attn_fwd_tma_kernel" if blocks.tma else "_attn_fwd_kernel"] += 1
    return o, lse


def _descriptors(q, k, v, o, blocks):
    """4-D descriptors: q/o tiles [1, block_m / G, G, BLOCK_D] (the folded rows), k/v tiles
    [1, block_n, 1, BLOCK_D]. Out-of-range rows and columns read as 0 and are not written."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    qo_box, kv_box = _boxes(q.shape[-1], q.shape[2] // k.shape[2], blocks)
    return tuple(TensorDescriptor(t, list(t.shape), _tma_strides(t), box)
                 for t, box in ((q, qo_box), (k, kv_box), (v, kv_box), (o, qo_box)))


def _boxes(head_dim: int, group: int, blocks) -> tuple[list, list]:
    """Descriptor tiles: q/o/dO [1, block_m / G, G, BLOCK_D], k/v [1, block_n, 1, BLOCK_D]."""
    bd = _block_d(head_dim)
    return [1, blocks.block_m // group, group, bd], [1, blocks.block_n, 1, bd]


def _check_tma(q, k, v, blocks) -> None:
    why = tma_problem(q, k, v, blocks)
    if why is not None:
        raise ValueError(f"blocks: tma=True cannot run this problem: {why}")


def _dq_descriptor(dq_acc, group: int, blocks):
    """dq_tma: a 4-D descriptor over the fp32 dQ accumulator [B, Sq, H, D], tiles [1, block_m /
    G, G, BLOCK_D] (the folded rows of one dK/dV step); the bulk reductions skip rows past Sq.
    Refuses, before any launch, a problem or device it cannot serve."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if group & (group - 1) or blocks.block_m % group:
        raise ValueError(f"blocks: dq_tma=True cannot run this problem: the group size {group} must be a "
                         f"power of two dividing block_m={blocks.block_m}")
    if triton_interpreting():
        from .._platform import interpreter_descriptor_reduce

        interpreter_descriptor_reduce()
    elif torch.cuda.get_device_capability(dq_acc.device)[0] < 9:
        cap = torch.cuda.get_device_capability(dq_acc.device)
        raise ValueError(f"blocks: dq_tma=True needs sm_90 or later (tensor-descriptor reductions), got "
                         f"sm_{cap[0]}{cap[1]}")
    box = [1, blocks.block_m // group, group, _block_d(dq_acc.shape[-1])]
    return TensorDescriptor(dq_acc, list(dq_acc.shape), _tma_strides(dq_acc), box)


def _flash_bwd(do, q, k, v, o, lse, q_seg, kv_seg, *, causal, window, softcap, scale, blocks,
               q_end=None):
    """Backward launches (delta, then dk/dv, then dq) -> (dq, dk, dv) in the inputs' dtypes."""
    if q_end is not None:
        check_bidirectional_blocks(blocks)
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    delta = torch.empty_like(lse)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    (qs, ks), seg_strides = _segment_args(q_seg, kv_seg, lse)
    qe, qe_strides = _qend_args(q_end, lse)
    bidir = q_end is not None
    meta = _constexprs(d, q.dtype, g, causal=causal, window=window, softcap=softcap,
                       segments=q_seg is not None, blocks=blocks, bidirectional=bidir)
    scalars = (sq, skv, kvh, *_scalars(sq, skv, window, softcap, scale))
    launch = dict(num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    rows_grid = (triton.cdiv(sq * g, blocks.block_m), b * kvh)
    dq_blk = blocks.dq_blocks()
    meta_dq = _constexprs(d, q.dtype, g, causal=causal, window=window, softcap=softcap,
                          segments=q_seg is not None, blocks=dq_blk, bidirectional=bidir)
    qdo_descs = kv_descs = (None, None)
    if blocks.gluon_dkdv:  # checked before any launch; the descriptors want a dense dO
        from . import gluon_attention

        why = gluon_attention.gluon_bwd_problem(q, k, v, blocks, window=window, softcap=softcap,
                                                segments=q_seg is not None)
        if why is not None:
            raise ValueError(f"blocks: gluon_dkdv=True cannot run this problem: {why}")
        if tma_problem(do, k, v, blocks) is not None:
            do = do.contiguous()
    if blocks.tma:
        if blocks.num_stages == 2:
            raise ValueError(f"blocks: the TMA backward cannot use num_stages=2 (Triton 3.6's ptxas "
                             f"crashes on its dQ pass); use 1 or 3 (tma_blocks does), got {blocks}")
        _check_tma(q, k, v, blocks)
        if tma_problem(do, k, v, blocks) is not None:  # autograd's dO may be strided: copy it
            do = do.contiguous()
        q_d, _, _, do_d = _descriptors(q, k, v, do, blocks)  # the dK/dV pass streams q and dO
        qdo_descs = (q_d, do_d)
        if not blocks.dq_atomic:  # the dQ pass (none with dq_atomic) streams k and v
            _check_tma(q, k, v, dq_blk)
            _, k_d, v_d, _ = _descriptors(q, k, v, do, dq_blk)
            kv_descs = (k_d, v_d)
        meta, meta_dq = {**meta, "TMA": True}, {**meta_dq, "TMA": True}

    # dq_atomic: the dK pass adds dS K into a zeroed fp32 dQ (scaled and cast below); else a dummy
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if blocks.dq_atomic else delta
    dq_strides = dq_acc.stride() if blocks.dq_atomic else (0, 0, 0, 0)
    dq_desc = _dq_descriptor(dq_acc, g, blocks) if blocks.dq_tma else None

    triton_kernels._attn_bwd_preprocess_kernel[rows_grid](
        o, do, delta, *o.stride(), *do.stride(), sq, kvh,
        GROUP=g, HEAD_DIM=d, BLOCK_D=meta["BLOCK_D"], BLOCK_M=blocks.block_m, **launch,
    )
    key_blocks = triton.cdiv(skv, blocks.block_n)
    if blocks.dkdv_per_head:  # grid axis 2: the group's query heads, each over its own positions
        splits, loop_splits = g, 1
    else:
        splits = blocks.dkdv_splits or dkdv_splits(b * kvh * key_blocks, rows_grid[0], compiled_sm_count(q))
        loop_splits = splits
    dk_out, dv_out = dk, dv
    if splits > 1:  # fp32 partial sums per split, reduced below in a fixed order
        dk_out = torch.empty((splits, b, skv, kvh, d), dtype=torch.float32, device=q.device)
        dv_out = torch.empty_like(dk_out)
    for do_dk, do_dv, do_dq in blocks.dkdv_pass_flags():
        if blocks.gluon_dkdv:
            gluon_attention.gluon_dkdv(q, k, v, do, lse, delta, dk_out, dv_out, splits=splits, causal=causal,
                                       scale=scale, blocks=blocks, do_dk=do_dk, do_dv=do_dv,
                                       dq_acc=dq_acc if do_dq else None, window=window, softcap=softcap,
                                       q_seg=q_seg, kv_seg=kv_seg)
            continue
        triton_kernels._attn_bwd_dkdv_kernel[(key_blocks, b * kvh, splits)](
            q, k, v, do, dq_acc, dk_out, dv_out, lse, delta, qs, ks, qe, *qdo_descs, dq_desc if do_dq else None,
            loop_splits, *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq_strides, *dk.stride(),
            *dv.stride(), *seg_strides, *qe_strides, sq.bit_length() if bidir else 0,  # binary-search steps
            *scalars, **meta, **launch, SPLITS=splits > 1, DO_DK=do_dk, DO_DV=do_dv,
            DO_DQ=do_dq, DQ_TMA=do_dq and blocks.dq_tma, HEAD_SPLIT=blocks.dkdv_per_head,
        )
    if splits > 1:
        dk.copy_(dk_out.sum(0))
        dv.copy_(dv_out.sum(0))
    tma = "_tma" if blocks.tma else ""
    if blocks.dq_atomic:
        dq.copy_(dq_acc.mul_(scale))
    else:
        triton_kernels._attn_bwd_dq_kernel[(triton.cdiv(sq * g, dq_blk.block_m), b * kvh)](
            q, k, v, do, dq, lse, delta, qs, ks, qe, *kv_descs,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
            *seg_strides, *qe_strides, *scalars, **meta_dq, **launch,
        )
        LAUNCHES[f"_attn_bwd_dq{tma}_kernel"] += 1
    LAUNCHES["_attn_bwd_preprocess_kernel"] += 1
    LAUNCHES["_gluon_attn_bwd_dkdv_kernel" if blocks.gluon_dkdv else f"_attn_bwd_dkdv{tma}_kernel"] += blocks.dkdv_passes
    return dq, dk, dv


# --- differentiation shell: custom ops (traceable by torch.compile) -------------------------

@torch.library.custom_op("gemini_kernels::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_segment_ids: Optional[torch.Tensor], kv_segment_ids: Optional[torch.Tensor],
    causal: bool, window: Optional[int], softcap: Optional[float], scale: float,
    fwd_blocks: list[int], bwd_blocks: list[int], q_end: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse); ``*_blocks`` are TritonAttentionBlocks.as_list() (bwd ones kept for autograd);
    q_end: int32 [B, Sq] last visible key per query (bidirectional blocks) or None."""
    return _flash_fwd(q, k, v, q_segment_ids, kv_segment_ids, causal=causal, window=window,
                      softcap=softcap, scale=scale, blocks=TritonAttentionBlocks.from_list(fwd_blocks),
                      q_end=q_end)


@flash_attention_fwd.register_fake
def _(q, k, v, q_segment_ids, kv_segment_ids, causal, window, softcap, scale, fwd_blocks, bwd_blocks,
      q_end=None):
    b, sq, h, _ = q.shape
    kvh = k.shape[2]
    return q.new_empty(q.shape), q.new_empty((b * kvh, sq * (h // kvh)), dtype=torch.float32)


@torch.library.custom_op("gemini_kernels::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    o: torch.Tensor, lse: torch.Tensor,
    q_segment_ids: Optional[torch.Tensor], kv_segment_ids: Optional[torch.Tensor],
    causal: bool, window: Optional[int], softcap: Optional[float], scale: float,
    bwd_blocks: list[int], q_end: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the forward's output and lse."""
    return _flash_bwd(do, q, k, v, o, lse, q_segment_ids, kv_segment_ids, causal=causal,
                      window=window, softcap=softcap, scale=scale,
                      blocks=TritonAttentionBlocks.from_list(bwd_blocks), q_end=q_end)


@flash_attention_bwd.register_fake
def _(do, q, k, v, o, lse, q_segment_ids, kv_segment_ids, causal, window, softcap, scale, bwd_blocks,
      q_end=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, q_seg, kv_seg, causal, window, softcap, scale, _, bwd_blocks, q_end = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, q_seg, kv_seg, q_end)
    ctx.params = dict(causal=causal, window=window, softcap=softcap, scale=scale, bwd_blocks=bwd_blocks)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, q_seg, kv_seg, q_end = ctx.saved_tensors
    p = ctx.params
    dq, dk, dv = flash_attention_bwd(do, q, k, v, o, lse, q_seg, kv_seg, p["causal"], p["window"],
                                     p["softcap"], p["scale"], p["bwd_blocks"], q_end)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def attention_triton(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                     q_segment_ids=None, kv_segment_ids=None, blocks=None, q_end=None):
    """Flash attention (see ``spec.py``); differentiable in q, k, v.

    q_end: None, or int32 [B, Sq] each query's last visible key position (bidirectional
    blocks, causal only; ``reference.bidirectional_q_end``): pointer tiles only, so the
    defaults keep the pointer backward and explicit Gluon / TMA blocks are refused.

    Expects validated arguments (``kernels.torch_ops.attention`` checks them). ``blocks``: one
    TritonAttentionBlocks for the forward and backward passes, a (forward, backward) pair,
    None for ``default_blocks``, or "autotune": the fastest ``candidate_blocks`` on these
    shapes, timed once per problem class (``triton_autotune.py``): the forward's, and the
    backward's when q, k or v requires grad (else the default backward).
    """
    d = q.shape[-1]
    if scale is None:
        scale = d ** -0.5
    if blocks is None or blocks == "autotune":
        cap = _capability(q)
        features = window is not None or softcap is not None or q_segment_ids is not None
        fwd = default_forward_blocks(q, k, v, cap, features=features)
        bwd = default_backward_blocks(q, k, v, cap, features=features)
        if q_end is not None:  # the pointer tiles (the problem defaults may pick Gluon or TMA ones)
            fwd = default_blocks(d, q.dtype, capability=cap)
            bwd = default_blocks(d, q.dtype, backward=True, capability=cap)
        if blocks == "autotune":  # with q_end: among the pointer-tile candidates, q_end in the launches
            from .triton_autotune import autotuned_backward_blocks, autotuned_forward_blocks

            opts = dict(causal=bool(causal), window=window, softcap=softcap, scale=float(scale), q_end=q_end)
            fwd = autotuned_forward_blocks(q, k, v, q_segment_ids, kv_segment_ids, **opts)
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                bwd = autotuned_backward_blocks(q, k, v, q_segment_ids, kv_segment_ids, **opts,
                                                fwd_blocks=fwd)
    elif isinstance(blocks, TritonAttentionBlocks):
        fwd = bwd = blocks
    elif (isinstance(blocks, tuple) and len(blocks) == 2
          and all(isinstance(b, TritonAttentionBlocks) for b in blocks)):
        fwd, bwd = blocks
    else:
        raise TypeError(f"blocks: expected None, 'autotune', a TritonAttentionBlocks or a (forward, "
                        f"backward) pair of them, got {blocks!r}")
    if bwd.gluon:  # a forward kernel only: the pair names the backward's own tiles
        raise ValueError(f"blocks: gluon={bwd.gluon} is a forward-only option; pass a (forward, backward) "
                         f"pair whose backward has gluon=0, got backward blocks {bwd}")
    if q_end is not None:
        if not causal:
            raise ValueError("q_end (bidirectional_ids) needs causal=True")
        check_bidirectional_blocks((fwd, bwd))
    o, _ = flash_attention_fwd(q, k, v, q_segment_ids, kv_segment_ids, bool(causal), window,
                               softcap, float(scale), fwd.as_list(), bwd.as_list(), q_end)
    return o


# --- ahead-of-time compile support ---------------------------------------------------------

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _aot_kernel(fn, constexprs, pointer_types, blocks):
    """A launch with contiguous inputs: 16-byte aligned pointers and strides, unit head_dim
    strides (the JIT turns a stride of 1 into a constant)."""
    return aot_kernel(fn, pointers=pointer_types, constexprs=constexprs, num_warps=blocks.num_warps,
                      num_stages=blocks.num_stages, floats=("sm_scale", "softcap"),
                      unit_strides=d_strides(fn, exclude="seg"))


def aot_kernels(head_dim=128, dtype=torch.float16, *, causal=True, window=None, softcap=None,
                segments=False, group=8, capability=(9, 0),
                blocks: Optional[TritonAttentionBlocks] = None, bidirectional: bool = False) -> dict:
    """name -> AotKernel for fwd, bwd preprocess, dk/dv and dq in their default configuration on
    ``capability`` (or ``blocks`` for every pass, as ``attention_triton(blocks=...)`` uses it),
    specialized as ``_flash_fwd`` / ``_flash_bwd`` launch them (int64 segment ids; with
    ``bidirectional``, HAS_QEND and an int32 q_end, on the pointer tiles of ``_flash_bwd``'s
    bidirectional default: ``default_blocks``, never TMA). With
    ``dkdv_passes=2`` "_attn_bwd_dkdv_kernel" is the dK-only launch and "_attn_bwd_dv_kernel"
    the dV-only one; with ``dq_atomic`` there is no "_attn_bwd_dq_kernel"; with ``gluon`` only
    "_attn_fwd_kernel", the Gluon kernel (``source`` "gluon": ``kernels._aot.compile_aot``).

    Compile with ``kernels._aot.compile_aot(k, GPUTarget("cuda", 90, 32))`` (for a Triton
    kernel, ``triton.compile(triton.compiler.ASTSource(k.fn, k.signature, k.constexprs,
    k.attrs), target=..., options=dict(num_warps=k.num_warps, num_stages=k.num_stages))``).
    """
    if triton_interpreting():
        raise RuntimeError(
            "aot_kernels needs the real JIT: run it in a process started with TRITON_INTERPRET=0 "
            "(the interpreter replaces triton.language's own jit functions at import)")
    ty = "*" + _TRITON_DTYPE[dtype]
    pointer_types = {n: ty for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    seg_ty = "*i64" if segments else "*fp32"  # without segments the launcher passes lse as a dummy
    pointer_types.update(LSE="*fp32", DELTA="*fp32", QSEG=seg_ty, KVSEG=seg_ty,
                         QEND="*i32" if bidirectional else "*fp32")  # without q_end: lse as a dummy
    if bidirectional and blocks is not None:
        check_bidirectional_blocks(blocks)
    if blocks is not None and blocks.gluon:  # the Gluon forward: no backward passes of its own
        from . import gluon_attention

        return {"_attn_fwd_kernel": gluon_attention.aot_kernel(head_dim, dtype, group, causal, blocks,
                                                                window, softcap, segments)}
    out = {}
    for name, backward in (("_attn_fwd_kernel", False), ("_attn_bwd_preprocess_kernel", True),
                           ("_attn_bwd_dkdv_kernel", True), ("_attn_bwd_dq_kernel", True)):
        pass_blocks = blocks or default_blocks(head_dim, dtype, backward=backward,
                                               capability=tuple(capability))
        if name == "_attn_bwd_dq_kernel":
            if pass_blocks.dq_atomic:  # dQ comes from the dK/dV pass: no dQ kernel
                continue
            pass_blocks = pass_blocks.dq_blocks()
        meta = _constexprs(head_dim, dtype, group, causal=causal, window=window, softcap=softcap,
                           segments=segments, blocks=pass_blocks, bidirectional=bidirectional)
        fn = getattr(triton_kernels, name)
        meta = {k: v for k, v in meta.items() if k in fn.arg_names}
        types = pointer_types
        if "SPLITS" in fn.arg_names:  # fp32 partials unless splits are pinned to 1 (per head: always 0)
            meta["SPLITS"] = pass_blocks.dkdv_splits != 1
            if meta["SPLITS"]:
                types = {**types, "DK": "*fp32", "DV": "*fp32"}
        if "TMA" in fn.arg_names:  # the descriptors: None without tma, else their launch types
            meta["TMA"] = pass_blocks.tma
            descs = {n: t for n, t in _aot_descriptor_types(head_dim, dtype, group, pass_blocks).items()
                     if n in fn.arg_names}
            meta.update({n: None for n in descs if not pass_blocks.tma})
            types = {**types, **(descs if pass_blocks.tma else {})}
        if name != "_attn_bwd_dkdv_kernel":
            out[name] = _aot_kernel(fn, meta, types, pass_blocks)
            continue
        if pass_blocks.gluon_dkdv:  # the Gluon dK/dV pass (gluon_bwd_kernels.py), named as Triton's
            from . import gluon_attention

            for do_dk, do_dv, do_dq in pass_blocks.dkdv_pass_flags():
                kernel = gluon_attention.aot_dkdv_kernel(head_dim, dtype, group, causal, pass_blocks, do_dk, do_dv,
                                                         meta["SPLITS"], do_dq, window, softcap, segments)
                if not do_dk:  # the dV-only launch: its own name (compile outputs are named by it)
                    kernel = kernel._replace(name="_gluon_attn_bwd_dv_kernel")
                out["_attn_bwd_dkdv_kernel" if do_dk else "_attn_bwd_dv_kernel"] = kernel
            continue
        types = {**types, "DQ": "*fp32"}  # the fp32 dQ accumulator (a dummy without dq_atomic)
        for do_dk, do_dv, do_dq in pass_blocks.dkdv_pass_flags():
            dq_tma = do_dq and pass_blocks.dq_tma
            flags = {**meta, "DO_DK": do_dk, "DO_DV": do_dv, "DO_DQ": do_dq, "DQ_TMA": dq_tma,
                     "HEAD_SPLIT": pass_blocks.dkdv_per_head}
            pass_types = types
            if dq_tma:  # the descriptor over the fp32 accumulator, tiles of the folded rows
                pass_types = {**types, "DQ_DESC": _aot_dq_descriptor_type(head_dim, group, pass_blocks)}
            else:
                flags["DQ_DESC"] = None
            kernel = _aot_kernel(fn, flags, pass_types, pass_blocks)
            if not do_dk:  # the dV-only launch: its own name (compile outputs are named by it)
                kernel = kernel._replace(name="_attn_bwd_dv_kernel")
            out[kernel.name] = kernel
    return out


def _aot_dq_descriptor_type(head_dim, group, blocks) -> str:
    from triton.runtime.jit import mangle_type
    from triton.tools.tensor_descriptor import TensorDescriptor

    t = torch.empty((1, 1, group, head_dim), dtype=torch.float32)
    box = [1, blocks.block_m // group, group, _block_d(head_dim)]
    return mangle_type(TensorDescriptor(t, list(t.shape), [16 * head_dim, 16 * head_dim, head_dim, 1], box))


def _aot_descriptor_types(head_dim, dtype, group, blocks) -> dict:
    """name -> Triton's signature type of the forward's four descriptors (as ``_descriptors``)."""
    from triton.runtime.jit import mangle_type
    from triton.tools.tensor_descriptor import TensorDescriptor

    t = torch.empty((1, 1, group, head_dim), dtype=dtype)  # stands in for shapes and strides
    qo_box, kv_box = _boxes(head_dim, group, blocks)
    boxes = dict(Q_DESC=qo_box, K_DESC=kv_box, V_DESC=kv_box, O_DESC=qo_box, DO_DESC=qo_box)
    return {n: mangle_type(TensorDescriptor(t, list(t.shape), [16 * head_dim, 16 * head_dim, head_dim, 1], box))
            for n, box in boxes.items()}
