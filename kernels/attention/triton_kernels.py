"""Flash attention device code (Triton): forward, and the FA2 backward, with MQA/GQA folding.

What it computes: o = softmax(mask(softcap(scale * q @ k^T))) @ v for q [B, Sq, H, D] and
k, v [B, Skv, KVH, D] with H = KVH * G (semantics in ``spec.py``). The G query heads of a
kv group are folded into the rows of one tile: folded row r of kv head kvh is query
position r // G of head kvh * G + r % G. One program streams each K/V tile once for all
G heads, so MQA reads K/V once per group instead of once per head.

Side outputs, in a folded fp32 layout [B * KVH, Sq * G] (row-major, contiguous):
  LSE    log2-domain logsumexp of the scores, log2(sum_j 2^(s_j * log2 e)); +inf for rows
         that see no key, so exp2(s - lse) is 0 there and the backward gives zero grads.
  DELTA  rowsum(dO * O), from the backward preprocess.

Limits: head_dim <= 256 (BLOCK_D = next power of two, masked on d); any Sq, Skv >= 1;
any strides (base and row offsets in int64); fp32 (ieee dots), fp16, bf16 in, fp32 accumulate.
Causal / windowed tiles skip fully masked K/V (or Q) blocks from loop bounds; the forward
also splits its loop so interior blocks run without any mask arithmetic.
Bidirectional blocks (HAS_QEND, pointer tiles only): QEND [B, Sq] int32 holds each query's
last visible key position q_end (non-decreasing in the query, >= its causal position; see
``reference.bidirectional_q_end``). Rows take q_end as their position, so the causal and
window masks need nothing else; the forward and dQ bounds read q_end at a tile's first and
last query, and the dK/dV pass finds its row range by binary search over q_end.
Where it is fast: long sequences with large G (MQA/GQA), head_dim 64-128, fp16/bf16 on
sm_80+ (wgmma on sm_90). The dk/dv pass has B * KVH * cdiv(Skv, BLOCK_N) programs per
split; MQA and small batches split each key block's rows over several programs (interleaved
row blocks, fp32 partials summed by the launcher) so the backward still fills the GPU.
"""
from __future__ import annotations

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact limits +-1 for large |x| (no inf/inf), works compiled and interpreted.
    return 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0)


@triton.jit
def _visible(q_pos, kv_pos, kv_ok, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Which (query, key) pairs the position masks keep; arguments broadcast to the score tile."""
    ok = kv_ok
    if CAUSAL:
        ok = ok & (kv_pos <= q_pos)
    if HAS_WINDOW:
        ok = ok & (kv_pos > q_pos - window)
    return ok


@triton.jit
def _queries_before(QEND, qend_base, stride_qends, Sq, x, steps):
    """How many queries i in [0, Sq) have q_end[i] < x: q_end is non-decreasing, so a binary
    search of ``steps`` = Sq.bit_length() scalar loads (the interval [lo, hi] of candidate
    counts halves each step). Scalars: the same for the whole program."""
    lo = x * 0
    hi = lo + Sq
    for _ in range(steps):
        mid = (lo + hi) // 2
        e = tl.load(QEND + qend_base + tl.minimum(mid, Sq - 1) * stride_qends)
        active = lo < hi
        below = e < x
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & (e >= x), mid, hi)
    return lo


@triton.jit
def _fwd_kv_loop(
    acc, m_i, l_i,  # running state: [BLOCK_M, BLOCK_D] fp32, [BLOCK_M] fp32 (log2 domain), [BLOCK_M] fp32
    q,  # [BLOCK_M, BLOCK_D] query tile (input dtype)
    q_pos,  # [BLOCK_M] absolute key-space position of each folded row
    q_seg,  # [BLOCK_M] segment id of each folded row (unused without HAS_SEGMENTS)
    K, V, KVSEG,  # base pointers of k, v and kv segment ids
    k_base, v_base, kvseg_base,  # int64 offsets of this (batch, kv head)
    stride_ks, stride_kd, stride_vs, stride_vd, stride_kvsegs,
    start, stop,  # key range of this loop, start a multiple of BLOCK_N
    Skv, sm_scale, softcap, window,
    offs_n, offs_d, d_ok,
    K_DESC, V_DESC, off_b, off_kvh,  # TMA: 4-D descriptors over k, v [B, Skv, KVH, D] (else None)
    MASK_POS: tl.constexpr,  # apply causal / window / Skv-edge masks in this loop
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr = False, BLOCK_D: tl.constexpr = 16,
):
    for start_n in range(start, stop, BLOCK_N):
        kv_pos = start_n + offs_n  # [BLOCK_N]
        kv_ok = kv_pos < Skv
        kv_row = kv_pos.to(tl.int64)[:, None]
        k_ptrs = K + k_base + kv_row * stride_ks + offs_d[None, :] * stride_kd  # [BLOCK_N, BLOCK_D]
        v_ptrs = V + v_base + kv_row * stride_vs + offs_d[None, :] * stride_vd
        if TMA:  # the copy engine zero-fills rows past Skv and columns past HEAD_DIM
            k = K_DESC.load([off_b, start_n, off_kvh, 0]).reshape(BLOCK_N, BLOCK_D)
        elif MASK_POS:
            k = tl.load(k_ptrs, mask=kv_ok[:, None] & d_ok[None, :], other=0.0)
        elif EVEN_D:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N] fp32
        # log2-domain scores are s * qk_scale; without softcap the scale is folded into the
        # row max and the exponent (one FFMA per score instead of a multiply and a subtract)
        if HAS_SOFTCAP:
            s = _tanh(s * (sm_scale / softcap)) * (softcap * 1.4426950408889634)
            qk_scale = 1.0
        else:
            qk_scale = sm_scale * 1.4426950408889634
        if MASK_POS:
            ok = _visible(q_pos[:, None], kv_pos[None, :], kv_ok[None, :], window, CAUSAL, HAS_WINDOW)
            s = tl.where(ok, s, float("-inf"))
        if HAS_SEGMENTS:
            if MASK_POS:
                kv_seg = tl.load(KVSEG + kvseg_base + kv_pos * stride_kvsegs, mask=kv_ok, other=0)
            else:
                kv_seg = tl.load(KVSEG + kvseg_base + kv_pos * stride_kvsegs)
            s = tl.where(q_seg[:, None] == kv_seg[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # qk_scale > 0: max commutes with it
        # A row that has seen no key yet has m_new = -inf: subtract 0 instead (no -inf - -inf).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s * qk_scale - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if TMA:
            v = V_DESC.load([off_b, start_n, off_kvh, 0]).reshape(BLOCK_N, BLOCK_D)
        elif MASK_POS:
            v = tl.load(v_ptrs, mask=kv_ok[:, None] & d_ok[None, :], other=0.0)
        elif EVEN_D:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # [B, Sq, H, D] queries, any strides
    K,  # [B, Skv, KVH, D] keys
    V,  # [B, Skv, KVH, D] values
    O,  # [B, Sq, H, D] output, q's dtype
    LSE,  # [B * KVH, Sq * G] fp32 out: log2-domain logsumexp per folded row
    QSEG,  # [B, Sq] integer query segment ids (read only with HAS_SEGMENTS)
    KVSEG,  # [B, Skv] integer key segment ids (read only with HAS_SEGMENTS)
    QEND,  # [B, Sq] int32 last visible key position per query (read only with HAS_QEND)
    Q_DESC, K_DESC, V_DESC, O_DESC,  # TMA only: 4-D descriptors over q, k, v, o (else None)
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_qsegb, stride_qsegs, stride_kvsegb, stride_kvsegs,
    stride_qendb, stride_qends,
    Sq, Skv, KVH,  # lengths and kv heads
    sm_scale, softcap, window,  # score scale; softcap c (HAS_SOFTCAP); window W (HAS_WINDOW)
    GROUP: tl.constexpr,  # G = H // KVH query heads per kv head
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,  # D and next_power_of_2(D)
    BLOCK_M: tl.constexpr,  # folded rows per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    CAUSAL: tl.constexpr,  # causal upper bound (also set when HAS_WINDOW)
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" (ignored) for 16-bit
    TMA: tl.constexpr = False,  # sm_90+: q/k/v/o tiles through the tensor memory accelerator
    HAS_QEND: tl.constexpr = False,  # bidirectional blocks: positions from QEND (needs CAUSAL)
):
    start_m = tl.program_id(0)
    if CAUSAL:  # the longest rows (most keys) first, so the last wave is made of short ones
        start_m = tl.num_programs(0) - 1 - start_m
    pid_bh = tl.program_id(1)  # b * KVH + kv head
    off_b = pid_bh // KVH
    off_kvh = pid_bh % KVH
    n_rows = Sq * GROUP
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # folded rows [BLOCK_M]
    row_ok = rows < n_rows
    q_idx = rows // GROUP
    head = off_kvh * GROUP + rows % GROUP
    shift = Skv - Sq  # bottom-right alignment: query i sits at key position i + shift
    q_pos = q_idx + shift
    qend_base = off_b.to(tl.int64) * stride_qendb
    if HAS_QEND:  # each folded row sees keys <= q_end of its query (padded rows: 0, never stored)
        q_pos = tl.load(QEND + qend_base + q_idx * stride_qends, mask=row_ok, other=0)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D

    if TMA:  # folded rows [m0, m0 + BLOCK_M) = positions m0 / G + [0, BLOCK_M / G) x the G heads
        q = Q_DESC.load([off_b, start_m * (BLOCK_M // GROUP), off_kvh * GROUP, 0]).reshape(BLOCK_M, BLOCK_D)
    else:
        q_rows = off_b.to(tl.int64) * stride_qb + q_idx.to(tl.int64) * stride_qs + head.to(tl.int64) * stride_qh
        q = tl.load(Q + q_rows[:, None] + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    k_base = off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh
    v_base = off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh
    kvseg_base = off_b.to(tl.int64) * stride_kvsegb
    q_seg = q_idx
    if HAS_SEGMENTS:
        q_seg = tl.load(QSEG + off_b.to(tl.int64) * stride_qsegb + q_idx * stride_qsegs, mask=row_ok, other=0)

    # Key range [lo, hi) this tile can see, and inside it the blocks that need no position
    # mask [mid_lo, mid_hi). All divisions are on non-negative values (C and Python agree).
    m0 = start_m * BLOCK_M
    q_lo = m0 // GROUP + shift
    q_hi = (tl.minimum(m0 + BLOCK_M, n_rows) - 1) // GROUP + shift
    if HAS_QEND:  # q_end is non-decreasing: the tile's first and last queries bound its rows
        q_lo = tl.load(QEND + qend_base + (m0 // GROUP) * stride_qends)
        q_hi = tl.load(QEND + qend_base + ((tl.minimum(m0 + BLOCK_M, n_rows) - 1) // GROUP) * stride_qends)
    lo = 0
    hi = Skv
    full_lo = 0
    full_hi = Skv // BLOCK_N * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(Skv, q_hi + 1)
        full_hi = tl.minimum(full_hi, tl.maximum(q_lo + 1, 0) // BLOCK_N * BLOCK_N)
    if HAS_WINDOW:
        lo = tl.maximum(q_lo - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(q_hi - window + 1, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, m_i, l_i = _fwd_kv_loop(
        acc, m_i, l_i, q, q_pos, q_seg, K, V, KVSEG, k_base, v_base, kvseg_base,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_kvsegs, lo, mid_lo,
        Skv, sm_scale, softcap, window, offs_n, offs_d, d_ok, K_DESC, V_DESC, off_b, off_kvh,
        True, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, EVEN_D, BLOCK_N, DOT_PRECISION,
        TMA, BLOCK_D)
    acc, m_i, l_i = _fwd_kv_loop(
        acc, m_i, l_i, q, q_pos, q_seg, K, V, KVSEG, k_base, v_base, kvseg_base,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_kvsegs, mid_lo, mid_hi,
        Skv, sm_scale, softcap, window, offs_n, offs_d, d_ok, K_DESC, V_DESC, off_b, off_kvh,
        False, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, EVEN_D, BLOCK_N, DOT_PRECISION,
        TMA, BLOCK_D)
    acc, m_i, l_i = _fwd_kv_loop(
        acc, m_i, l_i, q, q_pos, q_seg, K, V, KVSEG, k_base, v_base, kvseg_base,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_kvsegs, mid_hi, hi,
        Skv, sm_scale, softcap, window, offs_n, offs_d, d_ok, K_DESC, V_DESC, off_b, off_kvh,
        True, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, EVEN_D, BLOCK_N, DOT_PRECISION,
        TMA, BLOCK_D)

    seen = l_i > 0.0  # rows that saw no key: output 0, lse +inf
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("inf"))
    if TMA:  # the copy engine drops rows past Sq and columns past HEAD_DIM
        O_DESC.store([off_b, start_m * (BLOCK_M // GROUP), off_kvh * GROUP, 0],
                     out.to(O_DESC.dtype).reshape(1, BLOCK_M // GROUP, GROUP, BLOCK_D))
    else:
        o_rows = off_b.to(tl.int64) * stride_ob + q_idx.to(tl.int64) * stride_os + head.to(tl.int64) * stride_oh
        tl.store(O + o_rows[:, None] + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * n_rows + rows, lse, mask=row_ok)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O,  # [B, Sq, H, D] forward output
    DO,  # [B, Sq, H, D] output gradient
    DELTA,  # [B * KVH, Sq * G] fp32 out: rowsum(dO * O) per folded row
    stride_ob, stride_os, stride_oh, stride_od,
    stride_dob, stride_dos, stride_doh, stride_dod,
    Sq, KVH,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    off_b = pid_bh // KVH
    off_kvh = pid_bh % KVH
    n_rows = Sq * GROUP
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    q_idx = (rows // GROUP).to(tl.int64)
    head = (off_kvh * GROUP + rows % GROUP).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    o_rows = off_b.to(tl.int64) * stride_ob + q_idx * stride_os + head * stride_oh
    do_rows = off_b.to(tl.int64) * stride_dob + q_idx * stride_dos + head * stride_doh
    o = tl.load(O + o_rows[:, None] + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(DO + do_rows[:, None] + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * n_rows + rows, delta, mask=row_ok)


@triton.jit
def _bwd_dkdv_loop(
    dk, dv,  # [BLOCK_N, BLOCK_D] fp32 accumulators of this key block
    k, v,  # [BLOCK_N, BLOCK_D] this program's keys and values
    kv_pos, kv_ok, kv_seg,  # [BLOCK_N] key positions, in-range flags, segment ids
    Q, DO, LSE, DELTA, QSEG, Q_DESC, DO_DESC, row_base,
    off_b, off_kvh, stride_qb, stride_qs, stride_qh, stride_qd, stride_dob, stride_dos,
    stride_doh, stride_dod, stride_qsegb, stride_qsegs, n_rows, shift, sm_scale, softcap,
    window, offs_d, d_ok, QEND, qend_base, stride_qends,
    start, stop,  # folded rows of this loop, start a multiple of BLOCK_M (or >= stop)
    split, num_splits,  # this program takes the row blocks b with b % num_splits == split
    # (HEAD_SPLIT: split is the query head within the group, num_splits 1)
    DQ, stride_dqb, stride_dqs, stride_dqh, stride_dqd,  # DO_DQ: fp32 dq accumulator [B, Sq, H, D]
    DQ_DESC,  # DQ_TMA: a 4-D descriptor over DQ, tiles [1, BLOCK_M / G, G, BLOCK_D] (else None)
    MASK_POS: tl.constexpr,  # apply causal / window / Skv-edge masks in this loop
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SEGMENTS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
    DO_DK: tl.constexpr = True, DO_DV: tl.constexpr = True,  # which accumulators this pass updates
    DO_DQ: tl.constexpr = False,  # also add dS K (unscaled) into DQ with fp32 atomics (needs DO_DK)
    DQ_TMA: tl.constexpr = False,  # DO_DQ through DQ_DESC's bulk reductions instead of pointer atomics
    HAS_QEND: tl.constexpr = False,  # row positions from QEND (bidirectional blocks)
    HEAD_SPLIT: tl.constexpr = False,  # rows are positions of the one query head ``split``
):
    first = start + (split - (start // BLOCK_M) % num_splits + num_splits) % num_splits * BLOCK_M
    for start_m in range(first, stop, BLOCK_M * num_splits):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        if HEAD_SPLIT:  # n_rows = Sq; lse and delta stay in the folded layout
            q_idx = rows
            head = (off_kvh * GROUP + split).to(tl.int64)
            stat_rows = rows * GROUP + split
        else:
            q_idx = rows // GROUP
            head = (off_kvh * GROUP + rows % GROUP).to(tl.int64)
            stat_rows = rows
        if TMA:  # start_m is a multiple of BLOCK_M, so of G: whole positions
            q = Q_DESC.load([off_b, start_m // GROUP, off_kvh * GROUP, 0]).reshape(BLOCK_M, BLOCK_D)
            do = DO_DESC.load([off_b, start_m // GROUP, off_kvh * GROUP, 0]).reshape(BLOCK_M, BLOCK_D)
        else:
            q_mask = row_ok[:, None] & d_ok[None, :]
            q_rows = off_b.to(tl.int64) * stride_qb + q_idx.to(tl.int64) * stride_qs + head * stride_qh
            do_rows = off_b.to(tl.int64) * stride_dob + q_idx.to(tl.int64) * stride_dos + head * stride_doh
            q = tl.load(Q + q_rows[:, None] + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
            do = tl.load(DO + do_rows[:, None] + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        lse = tl.load(LSE + row_base + stat_rows, mask=row_ok, other=float("inf"))  # padded rows: p = 0
        delta = tl.load(DELTA + row_base + stat_rows, mask=row_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M] = s^T
        if HAS_SOFTCAP:
            t = _tanh(st * (sm_scale / softcap))
            pt = tl.math.exp2(t * (softcap * 1.4426950408889634) - lse[None, :])
        else:  # the scale folded into the exponent: one FFMA per score
            pt = tl.math.exp2(st * (sm_scale * 1.4426950408889634) - lse[None, :])
        if MASK_POS:  # transposed tile: keys are rows
            q_pos = q_idx + shift
            if HAS_QEND:
                q_pos = tl.load(QEND + qend_base + q_idx * stride_qends, mask=row_ok, other=0)
            ok = _visible(q_pos[None, :], kv_pos[:, None], kv_ok[:, None], window, CAUSAL, HAS_WINDOW)
            pt = tl.where(ok, pt, 0.0)
        if HAS_SEGMENTS:
            q_seg = tl.load(QSEG + off_b.to(tl.int64) * stride_qsegb + q_idx * stride_qsegs, mask=row_ok, other=0)
            pt = tl.where(kv_seg[:, None] == q_seg[None, :], pt, 0.0)
        if DO_DV:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        if DO_DK:
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
            dst = pt * (dpt - delta[None, :])
            if HAS_SOFTCAP:
                dst = dst * (1.0 - t * t)
            dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
            if DO_DQ:  # this key block's share of dQ for these rows: every visible (row, key)
                # pair is visited by exactly one program, so the relaxed fp32 adds sum to dS K
                # dQ^T = K^T dS^T [BLOCK_D, BLOCK_M]: K^T is a view of the K operand the score
                # dot already holds in shared memory (dS K would stage a second copy of K)
                dqt = tl.dot(tl.trans(k), dst.to(k.dtype), input_precision=DOT_PRECISION)
                if DQ_TMA:  # one bulk reduction of the tile (cp.reduce.async.bulk), no pointers
                    DQ_DESC.atomic_add([off_b, start_m // GROUP, off_kvh * GROUP, 0],
                                       tl.trans(dqt).reshape(1, BLOCK_M // GROUP, GROUP, BLOCK_D))
                else:
                    dq_rows = off_b.to(tl.int64) * stride_dqb + q_idx.to(tl.int64) * stride_dqs + head * stride_dqh
                    tl.atomic_add(DQ + dq_rows[None, :] + offs_d[:, None] * stride_dqd, dqt,
                                  mask=row_ok[None, :] & d_ok[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,  # [B, Sq, H, D] queries
    K,  # [B, Skv, KVH, D] keys
    V,  # [B, Skv, KVH, D] values
    DO,  # [B, Sq, H, D] output gradient
    DQ,  # DO_DQ: [B, Sq, H, D] fp32, zeroed: dQ / sm_scale accumulates here (else a dummy)
    DK,  # [B, Skv, KVH, D] out: key gradient, k's dtype (SPLITS: [num_splits, B, Skv, KVH, D] fp32)
    DV,  # [B, Skv, KVH, D] out: value gradient (SPLITS: fp32 partial sums, like DK)
    LSE,  # [B * KVH, Sq * G] fp32 log2-domain logsumexp from the forward
    DELTA,  # [B * KVH, Sq * G] fp32 rowsum(dO * O)
    QSEG,  # [B, Sq] integer query segment ids (HAS_SEGMENTS)
    KVSEG,  # [B, Skv] integer key segment ids (HAS_SEGMENTS)
    QEND,  # [B, Sq] int32 last visible key position per query (HAS_QEND)
    Q_DESC, DO_DESC,  # TMA only: 4-D descriptors over q and dO (else None)
    DQ_DESC,  # DQ_TMA only: a 4-D descriptor over DQ (else None)
    num_splits,  # programs per key block along grid axis 2, each over every num_splits-th row block
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_dqb, stride_dqs, stride_dqh, stride_dqd,
    stride_dkb, stride_dks, stride_dkh, stride_dkd,
    stride_dvb, stride_dvs, stride_dvh, stride_dvd,
    stride_qsegb, stride_qsegs, stride_kvsegb, stride_kvsegs,
    stride_qendb, stride_qends,
    qend_steps,  # HAS_QEND: binary-search steps over q_end, Sq.bit_length()
    Sq, Skv, KVH,
    sm_scale, softcap, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # folded q rows per inner step
    BLOCK_N: tl.constexpr,  # keys per program
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TMA: tl.constexpr = False,  # sm_90+: q and dO tiles through the tensor memory accelerator
    SPLITS: tl.constexpr = False,  # num_splits > 1: write fp32 partial sums, summed by the launcher
    DO_DK: tl.constexpr = True,  # compute and write dk (False: this launch is the dV-only pass)
    DO_DV: tl.constexpr = True,  # compute and write dv (False: this launch is the dK-only pass)
    DO_DQ: tl.constexpr = False,  # with DO_DK: dQ too, by fp32 atomics into DQ (no dQ kernel)
    DQ_TMA: tl.constexpr = False,  # those atomics as bulk tile reductions through DQ_DESC
    HAS_QEND: tl.constexpr = False,  # bidirectional blocks: positions from QEND (needs CAUSAL)
    # one program per query head of the group (grid axis 2, num_splits 1): it loops over that
    # head's positions only, BLOCK_M a step, and writes fp32 partials per head (SPLITS)
    HEAD_SPLIT: tl.constexpr = False,
):
    # One program: BLOCK_N keys of one (batch, kv head), looping over the folded q rows of the
    # group (every num_splits-th row block), so dk/dv sum over the G query heads in registers
    # (no atomics, deterministic). Splits give MQA at small batch enough programs. Two
    # launches, one with DO_DV only and one with DO_DK only, hold one [BLOCK_N, BLOCK_D] fp32
    # accumulator each instead of two: at head_dim 256 that is what lets 128-key tiles (a
    # warpgroup of 64 keys each on sm_90, no duplicated score tiles) fit in registers.
    # DO_DQ (FlashAttention 2/3's five-GEMM backward): the pass that forms dS also adds dS K
    # into an fp32 dQ with relaxed atomics, which replaces the dQ kernel and its two score
    # recomputes (3 of the 7 GEMMs) at the cost of one GEMM and BLOCK_M x D atomics a step;
    # the adds' order varies from run to run, so dQ is not bitwise deterministic.
    # HEAD_SPLIT (FlashAttention 3's GQA backward): the programs running together stream one
    # query head's q and dO (MQA at 16k, hd128: 8 MB, L2-resident, as the dQ pass's K/V are)
    # where folded row blocks stream every head's (128 MB): the bounds below are then in
    # positions (rows per position 1), and the G heads' partials are summed after.
    tl.static_assert(not (HEAD_SPLIT and TMA), "HEAD_SPLIT takes pointer tiles")
    RPP: tl.constexpr = 1 if HEAD_SPLIT else GROUP  # loop rows per query position
    start_n = tl.program_id(0) * BLOCK_N
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    off_b = pid_bh // KVH
    off_kvh = pid_bh % KVH
    n_rows = Sq * RPP
    shift = Skv - Sq
    kv_pos = start_n + tl.arange(0, BLOCK_N)
    kv_ok = kv_pos < Skv
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_mask = kv_ok[:, None] & d_ok[None, :]
    kv_row = kv_pos.to(tl.int64)
    k_rows = off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh + kv_row * stride_ks
    v_rows = off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh + kv_row * stride_vs
    k = tl.load(K + k_rows[:, None] + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
    v = tl.load(V + v_rows[:, None] + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
    kv_seg = kv_pos
    if HAS_SEGMENTS:
        kv_seg = tl.load(KVSEG + off_b.to(tl.int64) * stride_kvsegb + kv_pos * stride_kvsegs, mask=kv_ok, other=0)

    # Folded rows [lo, hi) whose queries can see some key of this block.
    lo = 0
    hi = n_rows
    if CAUSAL:
        lo = tl.maximum(start_n - shift, 0) * RPP // BLOCK_M * BLOCK_M
    if HAS_WINDOW:
        n_last = tl.minimum(start_n + BLOCK_N, Skv) - 1
        hi = tl.minimum(n_rows, tl.maximum(n_last + window - shift, 0) * RPP)

    # Inside [lo, hi), the row blocks [mid_lo, mid_hi) need no position mask: every query is
    # at or after the block's last key (causal) and within the window of its first one. The
    # Skv-edge block masks everything (its padded keys load as zeros, which would score 0).
    mid_lo = lo
    mid_hi = hi
    if CAUSAL:
        mid_lo = tl.maximum(start_n + BLOCK_N - 1 - shift, 0) * RPP
        mid_lo = tl.minimum(tl.maximum((mid_lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M, lo), hi)
    if HAS_WINDOW:
        mid_hi = tl.maximum(start_n + window - shift, 0) * RPP // BLOCK_M * BLOCK_M
        mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    qend_base = off_b.to(tl.int64) * stride_qendb
    if HAS_QEND:  # the same four bounds with q_end[i] in place of i + shift: queries before
        # the first whose q_end reaches a key, by binary search (q_end is non-decreasing)
        lo = _queries_before(QEND, qend_base, stride_qends, Sq, start_n, qend_steps) * RPP // BLOCK_M * BLOCK_M
        mid_lo = _queries_before(QEND, qend_base, stride_qends, Sq, start_n + BLOCK_N - 1, qend_steps) * RPP
        if HAS_WINDOW:  # rows whose window (q_end - W, q_end] still reaches the block's last key
            n_last = tl.minimum(start_n + BLOCK_N, Skv) - 1
            hi = _queries_before(QEND, qend_base, stride_qends, Sq, n_last + window, qend_steps) * RPP
            mid_hi = _queries_before(QEND, qend_base, stride_qends, Sq, start_n + window, qend_steps) * RPP
            mid_hi = mid_hi // BLOCK_M * BLOCK_M
        else:
            hi = n_rows
            mid_hi = n_rows
        mid_lo = tl.minimum(tl.maximum((mid_lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M, lo), hi)
        mid_hi = tl.minimum(tl.maximum(mid_hi, mid_lo), hi)
    if start_n + BLOCK_N > Skv:
        mid_lo = hi
        mid_hi = hi

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    row_base = pid_bh.to(tl.int64) * (Sq * GROUP)  # lse / delta rows: always folded
    args = (k, v, kv_pos, kv_ok, kv_seg, Q, DO, LSE, DELTA, QSEG, Q_DESC, DO_DESC, row_base,
            off_b, off_kvh, stride_qb, stride_qs, stride_qh, stride_qd, stride_dob, stride_dos,
            stride_doh, stride_dod, stride_qsegb, stride_qsegs, n_rows, shift, sm_scale, softcap,
            window, offs_d, d_ok, QEND, qend_base, stride_qends)
    dq_args = (split, num_splits, DQ, stride_dqb, stride_dqs, stride_dqh, stride_dqd, DQ_DESC)
    dk, dv = _bwd_dkdv_loop(dk, dv, *args, lo, mid_lo, *dq_args, True, GROUP, BLOCK_M, BLOCK_D, CAUSAL,
                            HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, DOT_PRECISION, TMA, DO_DK, DO_DV, DO_DQ,
                            DQ_TMA, HAS_QEND, HEAD_SPLIT)
    dk, dv = _bwd_dkdv_loop(dk, dv, *args, mid_lo, mid_hi, *dq_args, False, GROUP, BLOCK_M, BLOCK_D, CAUSAL,
                            HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, DOT_PRECISION, TMA, DO_DK, DO_DV, DO_DQ,
                            DQ_TMA, HAS_QEND, HEAD_SPLIT)
    dk, dv = _bwd_dkdv_loop(dk, dv, *args, mid_hi, hi, *dq_args, True, GROUP, BLOCK_M, BLOCK_D, CAUSAL,
                            HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, DOT_PRECISION, TMA, DO_DK, DO_DV, DO_DQ,
                            DQ_TMA, HAS_QEND, HEAD_SPLIT)
    dk = dk * sm_scale
    if SPLITS:  # fp32 partials [num_splits, B, Skv, KVH, D], contiguous
        part = ((split * (tl.num_programs(1) // KVH) + off_b).to(tl.int64) * Skv + kv_row) * KVH + off_kvh
        offs = part[:, None] * HEAD_DIM + offs_d[None, :]
        if DO_DK:
            tl.store(DK + offs, dk, mask=kv_mask)
        if DO_DV:
            tl.store(DV + offs, dv, mask=kv_mask)
    else:
        if DO_DK:
            dk_rows = off_b.to(tl.int64) * stride_dkb + off_kvh.to(tl.int64) * stride_dkh + kv_row * stride_dks
            tl.store(DK + dk_rows[:, None] + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), mask=kv_mask)
        if DO_DV:
            dv_rows = off_b.to(tl.int64) * stride_dvb + off_kvh.to(tl.int64) * stride_dvh + kv_row * stride_dvs
            tl.store(DV + dv_rows[:, None] + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_loop(
    dq,  # [BLOCK_M, BLOCK_D] fp32 accumulator of this row block
    q, do, lse, delta,  # this program's folded rows: [BLOCK_M, BLOCK_D] tiles, [BLOCK_M] rows
    q_pos, q_seg,  # [BLOCK_M] key-space positions and segment ids of the rows
    K, V, KVSEG, K_DESC, V_DESC, k_base, v_base, kvseg_base,
    off_b, off_kvh, stride_ks, stride_kd, stride_vs, stride_vd, stride_kvsegs, Skv,
    sm_scale, softcap, window, offs_n, offs_d, d_ok,
    start, stop,  # key range of this loop, start a multiple of BLOCK_N
    MASK_POS: tl.constexpr,  # apply causal / window / Skv-edge masks in this loop
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_SEGMENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TMA: tl.constexpr,
):
    for start_n in range(start, stop, BLOCK_N):
        kv_pos = start_n + offs_n
        kv_ok = kv_pos < Skv
        if TMA:  # the copy engine zero-fills rows past Skv and columns past HEAD_DIM
            k = K_DESC.load([off_b, start_n, off_kvh, 0]).reshape(BLOCK_N, BLOCK_D)
            v = V_DESC.load([off_b, start_n, off_kvh, 0]).reshape(BLOCK_N, BLOCK_D)
        else:
            kv_row = kv_pos.to(tl.int64)[:, None]
            kv_mask = kv_ok[:, None] & d_ok[None, :]
            k = tl.load(K + k_base + kv_row * stride_ks + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(V + v_base + kv_row * stride_vs + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        if HAS_SOFTCAP:
            t = _tanh(s * (sm_scale / softcap))
            p = tl.math.exp2(t * (softcap * 1.4426950408889634) - lse[:, None])
        else:  # the scale folded into the exponent: one FFMA per score
            p = tl.math.exp2(s * (sm_scale * 1.4426950408889634) - lse[:, None])
        if MASK_POS:
            ok = _visible(q_pos[:, None], kv_pos[None, :], kv_ok[None, :], window, CAUSAL, HAS_WINDOW)
            p = tl.where(ok, p, 0.0)
        if HAS_SEGMENTS:
            kv_seg = tl.load(KVSEG + kvseg_base + kv_pos * stride_kvsegs, mask=kv_ok, other=0)
            p = tl.where(q_seg[:, None] == kv_seg[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q,  # [B, Sq, H, D] queries
    K,  # [B, Skv, KVH, D] keys
    V,  # [B, Skv, KVH, D] values
    DO,  # [B, Sq, H, D] output gradient
    DQ,  # [B, Sq, H, D] out: query gradient, q's dtype
    LSE,  # [B * KVH, Sq * G] fp32 log2-domain logsumexp from the forward
    DELTA,  # [B * KVH, Sq * G] fp32 rowsum(dO * O)
    QSEG,  # [B, Sq] integer query segment ids (HAS_SEGMENTS)
    KVSEG,  # [B, Skv] integer key segment ids (HAS_SEGMENTS)
    QEND,  # [B, Sq] int32 last visible key position per query (HAS_QEND)
    K_DESC, V_DESC,  # TMA only: 4-D descriptors over k and v (else None)
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_dqb, stride_dqs, stride_dqh, stride_dqd,
    stride_qsegb, stride_qsegs, stride_kvsegb, stride_kvsegs,
    stride_qendb, stride_qends,
    Sq, Skv, KVH,
    sm_scale, softcap, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # folded q rows per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    TMA: tl.constexpr = False,  # sm_90+: k and v tiles through the tensor memory accelerator
    HAS_QEND: tl.constexpr = False,  # bidirectional blocks: positions from QEND (needs CAUSAL)
):
    start_m = tl.program_id(0)
    if CAUSAL:  # the longest rows (most keys) first, as in the forward
        start_m = tl.num_programs(0) - 1 - start_m
    pid_bh = tl.program_id(1)
    off_b = pid_bh // KVH
    off_kvh = pid_bh % KVH
    n_rows = Sq * GROUP
    shift = Skv - Sq
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    q_idx = rows // GROUP
    head = (off_kvh * GROUP + rows % GROUP).to(tl.int64)
    q_pos = q_idx + shift
    qend_base = off_b.to(tl.int64) * stride_qendb
    if HAS_QEND:  # each folded row sees keys <= q_end of its query (as in the forward)
        q_pos = tl.load(QEND + qend_base + q_idx * stride_qends, mask=row_ok, other=0)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_mask = row_ok[:, None] & d_ok[None, :]
    q_rows = off_b.to(tl.int64) * stride_qb + q_idx.to(tl.int64) * stride_qs + head * stride_qh
    do_rows = off_b.to(tl.int64) * stride_dob + q_idx.to(tl.int64) * stride_dos + head * stride_doh
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
    do = tl.load(DO + do_rows[:, None] + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
    row_base = pid_bh.to(tl.int64) * n_rows
    lse = tl.load(LSE + row_base + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
    q_seg = q_idx
    if HAS_SEGMENTS:
        q_seg = tl.load(QSEG + off_b.to(tl.int64) * stride_qsegb + q_idx * stride_qsegs, mask=row_ok, other=0)
    k_base = off_b.to(tl.int64) * stride_kb + off_kvh.to(tl.int64) * stride_kh
    v_base = off_b.to(tl.int64) * stride_vb + off_kvh.to(tl.int64) * stride_vh
    kvseg_base = off_b.to(tl.int64) * stride_kvsegb

    # Key range [lo, hi) this tile can see (same bounds as the forward).
    m0 = start_m * BLOCK_M
    q_lo = m0 // GROUP + shift  # the smallest and largest row positions of the tile
    q_hi = (tl.minimum(m0 + BLOCK_M, n_rows) - 1) // GROUP + shift
    if HAS_QEND:  # q_end is non-decreasing: the tile's first and last queries bound its rows
        q_lo = tl.load(QEND + qend_base + (m0 // GROUP) * stride_qends)
        q_hi = tl.load(QEND + qend_base + ((tl.minimum(m0 + BLOCK_M, n_rows) - 1) // GROUP) * stride_qends)
    lo = 0
    hi = Skv
    if CAUSAL:
        hi = tl.minimum(Skv, q_hi + 1)
    if HAS_WINDOW:
        lo = tl.maximum(q_lo - window + 1, 0) // BLOCK_N * BLOCK_N

    # Inside [lo, hi), the key blocks [mid_lo, mid_hi) need no position mask (as in the forward).
    full_lo = 0
    full_hi = Skv // BLOCK_N * BLOCK_N
    if CAUSAL:
        full_hi = tl.minimum(full_hi, tl.maximum(q_lo + 1, 0) // BLOCK_N * BLOCK_N)
    if HAS_WINDOW:
        full_lo = (tl.maximum(q_hi - window + 1, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    args = (q, do, lse, delta, q_pos, q_seg, K, V, KVSEG, K_DESC, V_DESC, k_base, v_base, kvseg_base,
            off_b, off_kvh, stride_ks, stride_kd, stride_vs, stride_vd, stride_kvsegs, Skv,
            sm_scale, softcap, window, offs_n, offs_d, d_ok)
    dq = _bwd_dq_loop(dq, *args, lo, mid_lo, True, BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW,
                      HAS_SOFTCAP, HAS_SEGMENTS, DOT_PRECISION, TMA)
    dq = _bwd_dq_loop(dq, *args, mid_lo, mid_hi, False, BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW,
                      HAS_SOFTCAP, HAS_SEGMENTS, DOT_PRECISION, TMA)
    dq = _bwd_dq_loop(dq, *args, mid_hi, hi, True, BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW,
                      HAS_SOFTCAP, HAS_SEGMENTS, DOT_PRECISION, TMA)
    dq = dq * sm_scale
    dq_rows = off_b.to(tl.int64) * stride_dqb + q_idx.to(tl.int64) * stride_dqs + head * stride_dqh
    tl.store(DQ + dq_rows[:, None] + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), mask=q_mask)
