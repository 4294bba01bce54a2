"""FlashAttention-3-style forward for sm_90 in Gluon: a TMA producer warp, two consumer warpgroups.

What it computes: the forward of ``triton_kernels._attn_fwd_kernel`` (same folded rows, same
log2-domain LSE layout, so the Triton backward runs on its outputs) for the problems it
takes: fp16/bf16, head_dim 64, 128 or 256, causal or not, a sliding window, a softcap (Gemma
2's local layers and logit caps), segment ids (packed sequences: every tile is masked then), G
a power of two dividing the rows a consumer stores (each tile is whole positions x the G
heads of a kv head).

Structure (FlashAttention 3, section 3.1, in Triton's Gluon dialect, which exposes what Triton's
own compiler does not do on sm_90 -- warp specialization of an attention loop, wgmma issued
asynchronously and waited on by count):
- a 1-warp producer partition with 24 registers issues TMA copies: the q tile once, then K and
  V tiles into a ring of NUM_STAGES shared-memory slots, each slot with ready barriers and
  empty barriers for K and for V apart (the score GEMM starts before V lands; K is refilled as
  soon as its scores are done, V after P V);
- consumers run the online softmax, with setmaxnreg giving them the registers the producer
  does not use (240 a thread): MODE 1 and 2 one 8-warp default partition (two warpgroups of
  64 folded rows), MODE 2 issuing the next tile's S = Q K^T together with this tile's P V
  and waiting by count (``warpgroup_mma_wait(1)``), FA3's intra-warpgroup pipelining; MODE 3
  two 4-warp partitions of 64 rows each (the default and a worker) that take turns issuing
  their GEMMs through two mbarriers, FA3's ping-pong;
- key blocks every row of the tile sees in full skip the mask arithmetic (a uniform branch);
  the causal diagonal and the kv-length edge are masked.
Each consumer writes its rows of O through its own (no longer read) q rows in shared memory
and one TMA store, which drops rows past Sq; LSE as the Triton forward writes it. Rows that
see no key give zeros and LSE +inf.
Where it is fast: long causal or full prefill at head_dim 128 on H100/H200, MQA/GQA folded.
Checked against float64 in the CPU emulator (``kernels._gluon_emu``), not on a GPU yet: the
launcher offers it only as an sm_90 autotuning candidate of the
forward, so the tuner's agreement check against the Triton default gates it.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty,
                    off_b, off_kvh, q_pos0, lo, n_iter, BLOCK_N: gl.constexpr, GROUP: gl.constexpr):
    """Producer (1 warp): the q tile, then K_i and V_i for i < n_iter into slot i % NUM_STAGES,
    each once the consumers have released what that slot held NUM_STAGES tiles earlier
    (kv_empty[slot] for K, kv_empty[NUM_STAGES + slot] for V: K is free as soon as its scores
    are done, V only after P V, so K loads run ahead, as FA3's separate K and V pipelines)."""
    NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [off_b, q_pos0, off_kvh * GROUP, 0], q_bar, q_smem)
    for i in range(n_iter):
        slot = i % NUM_STAGES
        phase = (i // NUM_STAGES) & 1
        mbarrier.wait(kv_empty.index(slot), phase ^ 1)  # a fresh barrier's phase 1 counts as done
        start_n = lo + i * BLOCK_N
        kr = k_ready.index(slot)
        mbarrier.expect(kr, k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [off_b, start_n, off_kvh, 0], kr, k_bufs.index(slot))
        mbarrier.wait(kv_empty.index(NUM_STAGES + slot), phase ^ 1)
        vr = v_ready.index(slot)
        mbarrier.expect(vr, v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [off_b, start_n, off_kvh, 0], vr, v_bufs.index(slot))


@gluon.jit
def _scores(q, k_bufs, k_ready, i, s_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
            HEAD_DIM: gl.constexpr):
    """Issue S_i = Q K_i^T (async) once K_i has landed; returns the pending accumulator."""
    NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
    slot = i % NUM_STAGES
    mbarrier.wait(k_ready.index(slot), (i // NUM_STAGES) & 1)
    k = k_bufs.index(slot).reshape([BLOCK_N, HEAD_DIM])
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    return warpgroup_mma(q, k.permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact limits +-1 for large |x| (as the Triton kernels)
    return 1.0 - 2.0 / (gl.exp2(x * 2.8853900817779268) + 1.0)


@gluon.jit
def _mask_tile(s, i, lo, q_pos, cols, Skv, masks, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
               HAS_WINDOW: gl.constexpr, HAS_SEGMENTS: gl.constexpr):
    """Tile i's scores with the pairs no query may see at -inf: keys past Skv, after the query
    (causal), before its window, in another segment."""
    window = masks[2]
    kv_pos = lo + i * BLOCK_N + cols
    ok = gl.expand_dims(kv_pos < Skv, 0)
    if CAUSAL:
        ok = ok & (gl.expand_dims(kv_pos, 0) <= gl.expand_dims(q_pos, 1))
    if HAS_WINDOW:
        ok = ok & (gl.expand_dims(kv_pos, 0) > gl.expand_dims(q_pos - window, 1))
    if HAS_SEGMENTS:
        q_seg, kv_seg_ptr, stride_kvss = masks[5], masks[6], masks[7]
        kv_seg = gl.load(kv_seg_ptr + kv_pos * stride_kvss, mask=kv_pos < Skv, other=-1)
        ok = ok & (gl.expand_dims(kv_seg, 0) == gl.expand_dims(q_seg, 1))
    return gl.where(ok, s, float("-inf"))


@gluon.jit
def _softmax_step(s, m_i, l_i, i, lo, q_pos, cols, Skv, qk_scale, masks,
                  BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr,
                  HAS_SOFTCAP: gl.constexpr, HAS_SEGMENTS: gl.constexpr):
    """Tile i's online-softmax update: (p, alpha, m_new, l_new). ``masks`` = (n_head, n_full,
    window, softcap_in, softcap_out): tiles before n_head (the window's edge) and from n_full
    on (the causal diagonal, the kv-length edge) are masked; the others every row sees in
    full (with segment ids, every tile is masked: masks then also holds the rows' q segment ids,
    this batch's kv segment-id pointer and its stride). Scores are in log2 units through
    qk_scale, folded into the max and the exponent; with a softcap c they become
    c * tanh(s * scale / c) first (softcap_in = scale / c, softcap_out = c * log2 e; qk_scale is
    then 1), as the Triton forward."""
    n_head, n_full, softcap_in, softcap_out = masks[0], masks[1], masks[3], masks[4]
    if HAS_SOFTCAP:
        s = _tanh(s * softcap_in) * softcap_out
    if HAS_SEGMENTS:  # every tile: segments may end anywhere
        s = _mask_tile(s, i, lo, q_pos, cols, Skv, masks, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SEGMENTS)
    elif (i >= n_full) | (i < n_head):
        s = _mask_tile(s, i, lo, q_pos, cols, Skv, masks, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SEGMENTS)
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no -inf - -inf
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_safe, 1))
    l_new = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_new


@gluon.jit
def _pv(p16, acc, v_bufs, v_ready, i, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Issue O += P_i V_i (async) once V_i has landed; P_i (16-bit, the A-operand layout)
    from registers."""
    NUM_STAGES: gl.constexpr = v_bufs.type.shape[0]
    slot = i % NUM_STAGES
    mbarrier.wait(v_ready.index(slot), (i // NUM_STAGES) & 1)
    v = v_bufs.index(slot).reshape([BLOCK_N, HEAD_DIM])
    return warpgroup_mma(p16, v, acc, is_async=True)


@gluon.jit
def _turn(turn, t, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong: wait until this warpgroup may issue its GEMMs for its t-th time (warpgroup 0
    goes first: a fresh barrier's phase 1 counts as done), as FA3's warp-scheduler barriers."""
    if PINGPONG:
        mbarrier.wait(turn.index(WG), (t + 1 - WG) & 1)


@gluon.jit
def _pass_turn(turn, WG: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turn.index(1 - WG), count=1)


@gluon.jit
def _kv_loop(q, k_bufs, v_bufs, k_ready, v_ready, kv_empty, turn, acc, m_i, l_i, masks, n_iter, lo,
             q_pos, cols, Skv, qk_scale, s_layout: gl.constexpr, o_layout: gl.constexpr,
             ROWS: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, CAUSAL: gl.constexpr,
             HAS_WINDOW: gl.constexpr, HAS_SOFTCAP: gl.constexpr, HAS_SEGMENTS: gl.constexpr,
             OVERLAP: gl.constexpr, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Tiles 0 .. n_iter - 1 of the ring. Without OVERLAP: S_i, wait, softmax, P_i V_i, wait.
    With OVERLAP (FA3's intra-warpgroup pipelining): S_i and then P_{i-1} V_{i-1} are issued
    together; waiting until one group is outstanding completes S_i (the older), so tile i's
    softmax can run while the tensor cores do P_{i-1} V_{i-1}, and O is rescaled after it.
    K_i's slot is released once S_i is done, V_{i-1}'s once P_{i-1} V_{i-1} is (the producer
    refills K ahead of V). With PINGPONG each warpgroup issues its GEMMs in turns with the
    other, so one's softmax runs during the other's GEMMs (FA3's inter-warpgroup overlap;
    ptxas places the wait for P V ahead of the exponentials in the SASS, so that is where
    the overlap comes from)."""
    NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = v_bufs.dtype
    if OVERLAP:
        if n_iter > 0:
            _turn(turn, 0, WG, PINGPONG)
            s = _scores(q, k_bufs, k_ready, 0, s_layout, ROWS, BLOCK_N, HEAD_DIM)
            _pass_turn(turn, WG, PINGPONG)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            mbarrier.arrive(kv_empty.index(0), count=1)  # K_0 read
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, 0, lo, q_pos, cols, Skv, qk_scale, masks,
                                               BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS)
            p16 = gl.convert_layout(p.to(dtype), p_layout)  # held across the next S: 16-bit
            for i in range(1, n_iter):
                _turn(turn, i, WG, PINGPONG)
                s = _scores(q, k_bufs, k_ready, i, s_layout, ROWS, BLOCK_N, HEAD_DIM)
                acc = _pv(p16, acc, v_bufs, v_ready, i - 1, BLOCK_N, HEAD_DIM)
                _pass_turn(turn, WG, PINGPONG)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                mbarrier.arrive(kv_empty.index(i % NUM_STAGES), count=1)  # K_i read
                p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, i, lo, q_pos, cols, Skv, qk_scale, masks,
                                                   BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS)
                # P_{i-1} is a dependency of the wait: its registers stay reserved until that
                # GEMM is done; P_i is written after it, as FA3 does. (ptxas schedules this wait
                # right after the row max, ahead of the exponentials, whatever the order here:
                # inside one warpgroup the softmax does not overlap P V in the SASS; ping-pong
                # overlaps it with the other warpgroup's GEMMs instead)
                acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
                mbarrier.arrive(kv_empty.index(NUM_STAGES + (i - 1) % NUM_STAGES), count=1)  # V_{i-1} read
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                p16 = gl.convert_layout(p.to(dtype), p_layout)
            _turn(turn, n_iter, WG, PINGPONG)
            acc = _pv(p16, acc, v_bufs, v_ready, n_iter - 1, BLOCK_N, HEAD_DIM)
            _pass_turn(turn, WG, PINGPONG)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(NUM_STAGES + (n_iter - 1) % NUM_STAGES), count=1)
    else:
        for i in range(0, n_iter):
            s = _scores(q, k_bufs, k_ready, i, s_layout, ROWS, BLOCK_N, HEAD_DIM)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            mbarrier.arrive(kv_empty.index(i % NUM_STAGES), count=1)  # K_i read
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, i, lo, q_pos, cols, Skv, qk_scale, masks,
                                               BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            acc = _pv(gl.convert_layout(p.to(dtype), p_layout), acc, v_bufs, v_ready, i, BLOCK_N, HEAD_DIM)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(NUM_STAGES + i % NUM_STAGES), count=1)  # V_i read
    return acc, m_i, l_i


@gluon.jit
def _consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, turn, o_desc, LSE,
              off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo, masks, n_iter,
              GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr, HAS_SOFTCAP: gl.constexpr,
              HAS_SEGMENTS: gl.constexpr,
              OVERLAP: gl.constexpr, PINGPONG: gl.constexpr, WG: gl.constexpr, NW: gl.constexpr):
    """A consumer partition of NW warps owning folded rows [WG * ROWS, (WG + 1) * ROWS) of the
    tile (ROWS = 16 * NW: all of it with one 8-warp consumer, half with two of 4 warps): the
    online softmax over the ring, then its rows of O and LSE."""
    ROWS: gl.constexpr = 16 * NW
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    r0 = m0 + WG * ROWS
    rows = r0 + gl.arange(0, ROWS, row_s)
    q_pos = rows // GROUP + shift
    cols = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))
    m_i = gl.full([ROWS], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([ROWS], gl.float32, row_s)
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)

    # masks from the kernel: (n_head, n_full, window, softcap_in, softcap_out, this batch's q and
    # kv segment-id pointers, their position strides); the loop's: the rows' q segment ids in
    # place of the q pointer
    q_seg = rows
    if HAS_SEGMENTS:
        q_seg = gl.load(masks[5] + (rows // GROUP) * masks[7], mask=rows < n_rows, other=-1)
    masks = (masks[0], masks[1], masks[2], masks[3], masks[4], q_seg, masks[6], masks[8])

    mbarrier.wait(q_bar, 0)
    q = q_smem.reshape([BLOCK_M, HEAD_DIM]).slice(WG * ROWS, ROWS)
    acc, m_i, l_i = _kv_loop(q, k_bufs, v_bufs, k_ready, v_ready, kv_empty, turn, acc, m_i, l_i, masks,
                             n_iter, lo, q_pos, cols, Skv, qk_scale, s_layout, o_layout, ROWS, BLOCK_N,
                             HEAD_DIM, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS, OVERLAP, WG, PINGPONG)

    seen = l_i > 0.0  # rows that saw no key: output 0, lse +inf
    l_safe = gl.where(seen, l_i, 1.0)
    lse = gl.where(seen, m_i + gl.log2(l_safe), float("inf"))
    gl.store(LSE + pid_bh.to(gl.int64) * n_rows + rows, lse, mask=rows < n_rows)
    out = (acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)).to(o_desc.dtype)
    # O leaves through this warpgroup's own q rows in shared memory (no GEMM reads them any
    # more) and one TMA store, which drops rows past Sq (pointer stores from the MMA layout
    # took two 64-bit pointers per 4 values: at head_dim 256 they spilled 0.5-1.2 KB)
    q.store(out)
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [off_b, r0 // GROUP, off_kvh * GROUP, 0],
                                    q_smem.slice(WG * (ROWS // GROUP), ROWS // GROUP, dim=1))
    tma.store_wait(pendings=0)


@gluon.jit
def _second_consumer(q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready,
                     kv_empty, turn, LSE,
                     off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo, masks, n_iter,
                     GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr,
                     HAS_SOFTCAP: gl.constexpr, HAS_SEGMENTS: gl.constexpr):
    """Ping-pong's second consumer (a 4-warp worker partition): rows [64, 128) of the tile.
    Worker partitions share one signature, hence the producer's arguments."""
    _consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, turn, o_desc, LSE,
              off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo, masks, n_iter,
              GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS,
              True, True, 1, 4)


@gluon.jit
def _producer(q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready,
              kv_empty, turn, LSE,
              off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo, masks, n_iter,
              GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, HAS_WINDOW: gl.constexpr,
              HAS_SOFTCAP: gl.constexpr, HAS_SEGMENTS: gl.constexpr):
    _load_partition(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty,
                    off_b, off_kvh, m0 // GROUP, lo, n_iter, BLOCK_N, GROUP)


@gluon.jit
def _gluon_attn_fwd_kernel(
    q_desc,  # 4-D TMA descriptor over q [B, Sq, H, D], block [1, BLOCK_M // GROUP, GROUP, D]
    k_desc, v_desc,  # over k, v [B, Skv, KVH, D], block [1, BLOCK_N, 1, D]
    o_desc,  # over the output [B, Sq, H, D] (q's dtype), block [1, ROWS // GROUP, GROUP, D]: a consumer's rows
    LSE,  # [B * KVH, Sq * G] fp32 out, log2 domain (the Triton forward's layout)
    Sq, Skv, KVH, qk_scale,  # qk_scale = softmax scale * log2(e), or 1 with a softcap
    window, softcap_in, softcap_out,  # window W (HAS_WINDOW); softcap: scale / c and c * log2(e)
    QSEG, KVSEG, stride_qsb, stride_qss, stride_kvsb, stride_kvss,  # HAS_SEGMENTS: ids [B, Sq], [B, Skv]
    GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr,  # CAUSAL: the upper bound (also set with a window)
    HAS_WINDOW: gl.constexpr, HAS_SOFTCAP: gl.constexpr, HAS_SEGMENTS: gl.constexpr,
    MODE: gl.constexpr,  # 1: one 8-warp consumer; 2: that with intra-warpgroup overlap; 3: ping-pong
    num_warps: gl.constexpr,
):
    start_m = gl.program_id(0)
    if CAUSAL:  # the longest rows first, as the Triton forward
        start_m = gl.num_programs(0) - 1 - start_m
    pid_bh = gl.program_id(1)
    off_b = pid_bh // KVH
    off_kvh = pid_bh % KVH
    n_rows = Sq * GROUP
    shift = Skv - Sq
    m0 = start_m * BLOCK_M
    qseg_b = QSEG + off_b.to(gl.int64) * stride_qsb  # HAS_SEGMENTS: this batch's ids
    kvseg_b = KVSEG + off_b.to(gl.int64) * stride_kvsb
    # key range [lo, hi) and inside it the tiles every row sees in full [mid_lo, mid_hi): the
    # Triton forward's bounds (all divisions on non-negative values)
    q_lo = m0 // GROUP + shift
    q_hi = (gl.minimum(m0 + BLOCK_M, n_rows) - 1) // GROUP + shift
    lo = 0
    hi = Skv
    full_lo = 0
    full_hi = Skv // BLOCK_N * BLOCK_N
    if CAUSAL:
        hi = gl.maximum(gl.minimum(Skv, q_hi + 1), 0)
        full_hi = gl.minimum(full_hi, gl.maximum(q_lo + 1, 0) // BLOCK_N * BLOCK_N)
    if HAS_WINDOW:
        lo = gl.maximum(q_lo - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = (gl.maximum(q_hi - window + 1, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    mid_lo = gl.minimum(gl.maximum(full_lo, lo), hi)
    mid_hi = gl.minimum(gl.maximum(full_hi, mid_lo), hi)
    n_iter = (gl.maximum(hi - lo, 0) + BLOCK_N - 1) // BLOCK_N
    n_head = gl.maximum(mid_lo - lo, 0) // BLOCK_N  # tiles before: the window's edge, masked
    n_full = gl.maximum(mid_hi - lo, 0) // BLOCK_N  # tiles from here: the diagonal and kv end, masked

    q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NUM_STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [NUM_STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    # kv_empty[s]: slot s's K released; kv_empty[NUM_STAGES + s]: its V released
    kv_empty = gl.allocate_shared_memory(gl.int64, [2 * NUM_STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    CONSUMERS: gl.constexpr = 2 if MODE == 3 else 1
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=CONSUMERS)  # each consumer releases each slot
        mbarrier.init(kv_empty.index(NUM_STAGES + i), count=CONSUMERS)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)

    # runtime values only (a tuple held in a variable turns constexprs into runtime values, so
    # the partitions' argument tuples, which hold the constexprs, are spelled out in each call)
    masks = (n_head, n_full, window, softcap_in, softcap_out, qseg_b, kvseg_b, stride_qss, stride_kvss)
    if MODE == 3:  # num_warps = 4: warpgroup 0 here, warpgroup 1 a worker, then the producer
        gl.warp_specialize([
            (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, turn, o_desc, LSE,
                         off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo,
                         masks, n_iter,
                         GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS,
                         True, True, 0, 4)),
            (_second_consumer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready,
                                v_ready, kv_empty, turn, LSE,
                                off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo,
                                masks, n_iter,
                                GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS)),
            (_producer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready,
                         kv_empty, turn, LSE,
                         off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo,
                         masks, n_iter,
                         GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS)),
        ], [4, 1], [240, 24])
    else:  # num_warps = 8: both warpgroups in the default partition
        gl.warp_specialize([
            (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty, turn, o_desc, LSE,
                         off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo,
                         masks, n_iter,
                         GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS,
                         MODE == 2, False, 0, 8)),
            (_producer, (q_desc, k_desc, v_desc, o_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready,
                         kv_empty, turn, LSE,
                         off_b, off_kvh, pid_bh, m0, n_rows, shift, Skv, qk_scale, lo,
                         masks, n_iter,
                         GROUP, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, HAS_SEGMENTS)),
        ], [1], [24])
