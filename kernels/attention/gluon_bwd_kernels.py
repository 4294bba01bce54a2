"""The attention backward's dK/dV pass for sm_90 in Gluon: a TMA producer warp streaming the
q and dO row blocks, one 8-warp consumer partition owning 128 keys.

What it computes: the Triton dK/dV pass (``triton_kernels._attn_bwd_dkdv_kernel``) for the
problems it takes: per key block (two warpgroups of 64 keys, the M side of every GEMM),
over the folded row blocks that can see it,
    S^T = K Q^T,  P^T = exp2(S^T * scale * log2 e - lse),  dV += P^T dO,
    dP^T = V dO^T,  dS^T = P^T * (dP^T - delta),  dK += dS^T Q  (times scale at the end),
with lse and delta from the forward and the Triton preprocess, in the same folded layout.
``DO_DK`` / ``DO_DV`` select the products (head_dim 256 runs two passes: one fp32
accumulator of 128 x 256 each), SPLITS writes fp32 partials [splits, B, Skv, KVH, D]
summed by the launcher, as the Triton pass does. dQ comes from the Triton dQ pass, or with
DO_DQ from the dK pass: dQ^T = K^T dS^T per row block (head_dim on the GEMM's M side, K^T a
transposed view of K's tile, dS^T staged in shared memory as the B operand), added into the
fp32 dQ by v4 atomics (FlashAttention 2's five GEMMs; sm_90 AOT: no spills at 32 rows a step,
123 KB at head_dim 128, 221 KB for the head_dim-256 dK pass).
Structure: the producer loads K (and V) once, then each row block's q and dO tiles
[1, BLOCK_M / G, G, D] into a ring of NUM_STAGES slots (one ready and one empty mbarrier a
slot); the consumer issues S^T and dP^T back to back and waits once. Row blocks on the causal
diagonal or the window's far edge are masked (a uniform branch) and those past the window
skipped; rows past Sq read lse = +inf (P = 0); keys past Skv are loaded as zeros and never
stored. Takes fp16/bf16, head_dim 64, 128 or 256, causal or not, a sliding window and a
softcap (Gemma 2's local layers and caps), segment ids (packed sequences: every row block
masked by them), G a power of two dividing BLOCK_M.
HEAD_SPLIT (``dkdv_per_head``): one program per query head of the group, its q/dO boxes
[1, BLOCK_M, 1, D] (BLOCK_M positions of that head), lse/delta gathered from the folded rows,
fp32 partials per head summed by the launcher (``triton_attention.TritonAttentionBlocks``).
Checked against float64 in the CPU emulator (``kernels._gluon_emu``), not yet run on a GPU:
offered as sm_90 backward autotune candidates, which the autotuner
checks against the default backward's gradients before timing them.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from .gluon_kernels import _tanh


@gluon.jit
def _bwd_producer(q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_bufs, do_bufs, kv_bar, ready, empty,
                  off_b, off_kvh, start_n, first, step, n_it, head, BLOCK_M: gl.constexpr, GROUP: gl.constexpr,
                  DO_DK: gl.constexpr, HEAD_SPLIT: gl.constexpr):
    """1 warp: K (and V for dK) once, then the q and dO tiles of row blocks first, first + step,
    ... into slot i % NUM_STAGES once the consumer released it (HEAD_SPLIT: BLOCK_M positions
    of query head ``head`` of the group a tile, [1, BLOCK_M, 1, D])."""
    NUM_STAGES: gl.constexpr = q_bufs.type.shape[0]
    if DO_DK:
        mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [off_b, start_n, off_kvh, 0], kv_bar, v_smem)
    else:
        mbarrier.expect(kv_bar, k_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [off_b, start_n, off_kvh, 0], kv_bar, k_smem)
    for i in range(n_it):
        slot = i % NUM_STAGES
        mbarrier.wait(empty.index(slot), ((i // NUM_STAGES) & 1) ^ 1)  # a fresh barrier's phase 1 is done
        if HEAD_SPLIT:  # rows are positions of one head
            pos = first + i * step
            h0 = off_kvh * GROUP + head
        else:
            pos = (first + i * step) // GROUP  # the row block's first position (G divides BLOCK_M)
            h0 = off_kvh * GROUP
        bar = ready.index(slot)
        mbarrier.expect(bar, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [off_b, pos, h0, 0], bar, q_bufs.index(slot))
        tma.async_copy_global_to_shared(do_desc, [off_b, pos, h0, 0], bar, do_bufs.index(slot))


@gluon.jit
def _bwd_consumer(q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_bufs, do_bufs, kv_bar, ready, empty,
                  off_b, off_kvh, start_n, first, step, n_it,
                  DK, DV, LSE, DELTA, row_base, n_rows, shift, Skv, qk_scale, sm_scale, masks,
                  dk_b, dk_s, dk_h, dv_b, dv_s, dv_h, part_row0, KVH, DQ, ds_smem, dq_s, dq_h, segs, head,
                  GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                  CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_SOFTCAP: gl.constexpr,
                  HAS_SEGMENTS: gl.constexpr, DO_DK: gl.constexpr, DO_DV: gl.constexpr, SPLITS: gl.constexpr,
                  DO_DQ: gl.constexpr, HEAD_SPLIT: gl.constexpr, num_warps: gl.constexpr):
    """The default partition (num_warps 8): the products above over its row blocks, then dK, dV
    (or their fp32 partials) for keys [start_n, start_n + BLOCK_N) below Skv. DO_DQ (with DO_DK):
    each row block's dQ^T = K^T dS^T too, dS^T staged in shared memory as the GEMM's B operand,
    added into the fp32 dQ at DQ (this batch's, its strides dq_s / dq_h) by atomics.
    ``masks`` = (mask_until, window_edge, window, softcap_in, softcap_out): row blocks starting
    before mask_until (the causal diagonal) or ending past window_edge (the window's far edge)
    are masked; with a softcap c, t = tanh(s * scale / c), P = exp2(t * c log2 e - lse) and
    dS picks up (1 - t^2), as the Triton pass. ``segs`` = (this batch's q and kv segment-id
    pointers, their position strides): with HAS_SEGMENTS a pair counts only within one segment.
    HEAD_SPLIT: rows are positions of query head ``head`` (n_rows = Sq); lse and delta stay in
    the folded layout (row r of the head is folded row r * G + head)."""
    RPP: gl.constexpr = 1 if HEAD_SPLIT else GROUP  # rows per query position
    mask_until, window_edge, window, softcap_in, softcap_out = masks
    NUM_STAGES: gl.constexpr = q_bufs.type.shape[0]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=a_layout, k_width=2)
    # dQ^T [HEAD_DIM, BLOCK_M]: head_dim on the M side (two warpgroups of HEAD_DIM / 2), rows on N
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, BLOCK_M, 16])
    dtype: gl.constexpr = q_bufs.dtype
    kv_pos = start_n + gl.arange(0, BLOCK_N, gl.SliceLayout(1, s_layout))
    cols = gl.arange(0, BLOCK_M, gl.SliceLayout(0, s_layout))
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, a_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, a_layout)
    zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)

    kv_seg = kv_pos
    if HAS_SEGMENTS:  # this key block's ids, once
        kv_seg = gl.load(segs[1] + kv_pos * segs[3], mask=kv_pos < Skv, other=-1)

    mbarrier.wait(kv_bar, 0)
    k_t = k_smem.reshape([BLOCK_N, HEAD_DIM])
    v_t = v_smem.reshape([BLOCK_N, HEAD_DIM])
    for i in range(n_it):
        slot = i % NUM_STAGES
        mbarrier.wait(ready.index(slot), (i // NUM_STAGES) & 1)
        q_t = q_bufs.index(slot).reshape([BLOCK_M, HEAD_DIM])
        do_t = do_bufs.index(slot).reshape([BLOCK_M, HEAD_DIM])
        st = warpgroup_mma(k_t, q_t.permute((1, 0)), zero, use_acc=False, is_async=True)
        if DO_DK:
            dpt = warpgroup_mma(v_t, do_t.permute((1, 0)), zero, use_acc=False, is_async=True)
        # the row block's lse (and segment ids) loaded while the score GEMMs run (delta too
        # spilled 24 B at 64 rows a step, head_dim 128: it is loaded after the wait)
        start_m = first + i * step
        rows = start_m + cols
        stat_rows = rows
        if HEAD_SPLIT:
            stat_rows = rows * GROUP + head
        lse = gl.load(LSE + row_base + stat_rows, mask=rows < n_rows, other=float("inf"))  # padded rows: P = 0
        if HAS_SEGMENTS:
            q_seg = gl.load(segs[0] + (rows // RPP) * segs[2], mask=rows < n_rows, other=-2)
        if DO_DK:
            st, dpt = warpgroup_mma_wait(num_outstanding=0, deps=(st, dpt))
        else:
            st = warpgroup_mma_wait(num_outstanding=0, deps=(st,))
        if HAS_SOFTCAP:
            t = _tanh(st * softcap_in)
            pt = gl.exp2(t * softcap_out - gl.expand_dims(lse, 0))
        else:
            pt = gl.exp2(st * qk_scale - gl.expand_dims(lse, 0))
        if CAUSAL:
            if (start_m < mask_until) | (start_m + BLOCK_M > window_edge):  # the diagonal, the window's edge
                q_pos = gl.expand_dims(rows // RPP + shift, 0)
                ok = gl.expand_dims(kv_pos, 1) <= q_pos
                if HAS_WINDOW:
                    ok = ok & (gl.expand_dims(kv_pos, 1) > q_pos - window)
                pt = gl.where(ok, pt, 0.0)
        if HAS_SEGMENTS:
            pt = gl.where(gl.expand_dims(kv_seg, 1) == gl.expand_dims(q_seg, 0), pt, 0.0)
        if DO_DV:
            dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), op_layout), do_t, dv, is_async=True)
        if DO_DK:
            delta = gl.load(DELTA + row_base + stat_rows, mask=rows < n_rows, other=0.0)
            dst = pt * (dpt - gl.expand_dims(delta, 0))
            if HAS_SOFTCAP:
                dst = dst * (1.0 - t * t)
            ds16 = dst.to(dtype)
            dk = warpgroup_mma(gl.convert_layout(ds16, op_layout), q_t, dk, is_async=True)
            if DO_DQ:  # dQ^T = K^T dS^T: K^T read transposed from K's tile, dS^T through shared memory
                ds_smem.store(ds16)
                fence_async_shared()
                dqt = warpgroup_mma(k_t.permute((1, 0)), ds_smem,
                                    gl.zeros([HEAD_DIM, BLOCK_M], gl.float32, dq_layout), use_acc=False,
                                    is_async=True)
        if DO_DQ:
            dk, dv, dqt = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv, dqt))
        else:
            dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))
        mbarrier.arrive(empty.index(slot), count=1)  # q and dO of this slot read
        if DO_DQ:  # folded row r is position r // G, head kvh * G + r % G; 32-bit offsets in the batch
            # four consecutive head_dim values a thread: one v4 atomic each
            add_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[4, 1], threads_per_warp=[32, 1],
                                                        warps_per_cta=[1, num_warps], order=[0, 1])
            dqt = gl.convert_layout(dqt, add_layout)
            r = start_m + gl.arange(0, BLOCK_M, gl.SliceLayout(0, add_layout))
            d_col = gl.arange(0, HEAD_DIM, gl.SliceLayout(1, add_layout))
            if HEAD_SPLIT:
                row_off = r * dq_s + (off_kvh * GROUP + head) * dq_h
            else:
                row_off = (r // GROUP) * dq_s + (off_kvh * GROUP + r % GROUP) * dq_h
            gl.atomic_add(DQ + gl.expand_dims(d_col, 1) + gl.expand_dims(row_off, 0), dqt,
                          mask=gl.expand_dims(r < n_rows, 0), sem="relaxed")

    dk = dk * sm_scale
    keys = start_n + gl.arange(0, BLOCK_N, gl.SliceLayout(1, a_layout))
    d = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, a_layout))
    ok = gl.expand_dims(keys < Skv, 1)
    if SPLITS:  # fp32 partials [num_splits, B, Skv, KVH, D], contiguous: row part_row0 + key * KVH
        offs = gl.expand_dims((part_row0 + keys.to(gl.int64) * KVH) * HEAD_DIM, 1) + gl.expand_dims(d, 0)
        if DO_DK:
            gl.store(DK + offs, dk, mask=ok)
        if DO_DV:
            gl.store(DV + offs, dv, mask=ok)
    else:
        if DO_DK:
            rows_k = off_b.to(gl.int64) * dk_b + off_kvh.to(gl.int64) * dk_h + keys.to(gl.int64) * dk_s
            gl.store(DK + gl.expand_dims(rows_k, 1) + gl.expand_dims(d, 0), dk.to(DK.dtype.element_ty), mask=ok)
        if DO_DV:
            rows_v = off_b.to(gl.int64) * dv_b + off_kvh.to(gl.int64) * dv_h + keys.to(gl.int64) * dv_s
            gl.store(DV + gl.expand_dims(rows_v, 1) + gl.expand_dims(d, 0), dv.to(DV.dtype.element_ty), mask=ok)


@gluon.jit
def _gluon_attn_bwd_dkdv_kernel(
    q_desc, do_desc,  # 4-D descriptors over q and dO [B, Sq, H, D], block [1, BLOCK_M // GROUP, GROUP, D]
    k_desc, v_desc,  # over k and v [B, Skv, KVH, D], block [1, BLOCK_N, 1, D]
    DK, DV,  # [B, Skv, KVH, D] in k's dtype, unit head_dim stride (SPLITS: fp32 [splits, B, Skv, KVH, D])
    DQ,  # DO_DQ: the fp32 dQ accumulator [B, Sq, H, D], unit head_dim stride, zeroed (else unused)
    LSE, DELTA,  # [B * KVH, Sq * G] fp32: the forward's log2-domain logsumexp, rowsum(dO * O)
    stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, stride_dqb, stride_dqs, stride_dqh,
    Sq, Skv, KVH, num_splits, sm_scale,
    window, softcap_in, softcap_out,  # window W (HAS_WINDOW); softcap (HAS_SOFTCAP): scale / c and c * log2(e)
    QSEG, KVSEG, stride_qsb, stride_qss, stride_kvsb, stride_kvss,  # HAS_SEGMENTS: ids [B, Sq], [B, Skv]
    GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,  # CAUSAL: the upper bound (also set with a window)
    HAS_WINDOW: gl.constexpr, HAS_SOFTCAP: gl.constexpr, HAS_SEGMENTS: gl.constexpr,
    DO_DK: gl.constexpr, DO_DV: gl.constexpr,
    SPLITS: gl.constexpr, DO_DQ: gl.constexpr, num_warps: gl.constexpr,
    HEAD_SPLIT: gl.constexpr = False,  # grid axis 2 is the query head of the group (q/dO blocks [1, BLOCK_M, 1, D])
):
    RPP: gl.constexpr = 1 if HEAD_SPLIT else GROUP  # loop rows per query position
    start_n = gl.program_id(0) * BLOCK_N
    pid_bh = gl.program_id(1)
    split = gl.program_id(2)
    off_b = pid_bh // KVH
    off_kvh = pid_bh % KVH
    n_rows = Sq * RPP
    shift = Skv - Sq
    # folded row blocks [lo, hi) that can see this key block; those before mask_until hold a
    # row before the block's last key, those past window_edge one whose window ends inside the
    # block (the Triton pass's bounds)
    lo = 0
    hi = n_rows
    mask_until = 0
    window_edge = n_rows + BLOCK_M  # no window: no row block reaches it
    if CAUSAL:
        lo = gl.maximum(start_n - shift, 0) * RPP // BLOCK_M * BLOCK_M
        mask_until = gl.maximum(start_n + BLOCK_N - 1 - shift, 0) * RPP
    if HAS_WINDOW:
        n_last = gl.minimum(start_n + BLOCK_N, Skv) - 1
        hi = gl.minimum(n_rows, gl.maximum(n_last + window - shift, 0) * RPP)
        window_edge = gl.maximum(start_n + window - shift, 0) * RPP
    if HEAD_SPLIT:  # every row block of this head: split is the head, not a share of the rows
        first = lo
        step = BLOCK_M
    else:
        first = lo + split * BLOCK_M
        step = BLOCK_M * num_splits
    n_it = (gl.maximum(hi - first, 0) + step - 1) // step
    row_base = pid_bh.to(gl.int64) * (Sq * GROUP)  # lse / delta rows: always folded
    part_row0 = ((split * (gl.num_programs(1) // KVH) + off_b).to(gl.int64) * Skv) * KVH + off_kvh

    q_bufs = gl.allocate_shared_memory(q_desc.dtype, [NUM_STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_bufs = gl.allocate_shared_memory(do_desc.dtype, [NUM_STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, v_desc.block_type.shape, v_desc.layout)
    ds_smem = k_smem  # DO_DQ: dS^T [BLOCK_N, BLOCK_M] staged for the dQ GEMM
    if DO_DQ:
        ds_smem = gl.allocate_shared_memory(q_desc.dtype, [BLOCK_N, BLOCK_M],
                                            gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], q_desc.dtype))
    dq_base = DQ + off_b.to(gl.int64) * stride_dqb
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)

    gl.warp_specialize([
        (_bwd_consumer, (q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_bufs, do_bufs, kv_bar, ready, empty,
                         off_b, off_kvh, start_n, first, step, n_it,
                         DK, DV, LSE, DELTA, row_base, n_rows, shift, Skv, sm_scale * 1.4426950408889634,
                         sm_scale, (mask_until, window_edge, window, softcap_in, softcap_out),
                         stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, part_row0, KVH,
                         dq_base, ds_smem, stride_dqs, stride_dqh,
                         (QSEG + off_b.to(gl.int64) * stride_qsb, KVSEG + off_b.to(gl.int64) * stride_kvsb,
                          stride_qss, stride_kvss), split,
                         GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, DO_DK,
                         DO_DV, SPLITS, DO_DQ, HEAD_SPLIT, num_warps)),
        (_bwd_producer, (q_desc, do_desc, k_desc, v_desc, k_smem, v_smem, q_bufs, do_bufs, kv_bar, ready, empty,
                         off_b, off_kvh, start_n, first, step, n_it, split, BLOCK_M, GROUP, DO_DK, HEAD_SPLIT)),
    ], [1], [24])
