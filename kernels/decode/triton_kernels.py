"""Split-KV decode attention device code (Triton): a split pass and a combine pass.

What it computes: for each row b and query head h (one new token), o = softmax(mask(
softcap(scale * q k^T))) v over cache positions [lo, L) with L = cache_seqlens[b] and
lo = max(L - window, 0) (semantics in ``spec.py``).

Split pass, grid (num_splits, B * KVH): program (s, b * KVH + kvh) takes the s-th share of
the K/V blocks of row b that hold attended positions, for all G query heads of kv head kvh
at once: the G heads are the rows of a [BLOCK_H, D] tile (BLOCK_H = G padded to >= 16), so
each K/V tile is read once per group and both products run on tensor cores (tl.dot).
Blocks past L and before the window are never loaded. Each program writes its normalized
partial output and its log2-domain logsumexp (-inf when its share is empty).
Paged cache (PAGED): K/V are page pools [num_pages, PAGE_SIZE, KVH, D] and BT the block table
[B, pages_per_row]; BLOCK_N divides PAGE_SIZE, so each K/V tile lies in one page: one scalar
table load per tile gives the page, then the tile is read as in the contiguous case (page
index clamped into [0, num_pages), offsets in int64). Only pages holding attended positions
are read.
Combine pass, grid (B * H, cdiv(D, BLOCK_DC)): o = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M),
M = max lse; all-empty rows (L == 0) give zeros. Each program loads all S shares of its
BLOCK_DC columns at once (<= 32 KiB): one round trip, where a loop over chunks of shares
was one dependent round trip per chunk (16 for 256 shares, on only B * H programs).

USE_PDL (sm_90+, launched with programmatic dependent launch): a kernel's blocks may start
while the kernel before it in the stream finishes; ``griddepcontrol.wait`` before the first
load makes what that kernel wrote visible. The split kernel waits, then lets the combine
launch at once (its blocks start, index, and wait for the split grid's end before loading
the partials): the combine's launch and ramp hide under the split's tail, a few of the ~12 us
of a batch-1 32k decode (FlashInfer and TensorRT-LLM launch their decode kernels so).

Limits: head_dim <= 256 (BLOCK_D = next power of two, masked); any strides; cache offsets
in int64 (caches beyond 2^31 elements); L is clamped to [0, max_len]; paged: PAGE_SIZE a
power of two >= 16 (BLOCK_N = min(block_n, PAGE_SIZE)). fp32 (ieee dots),
fp16, bf16 in; fp32 accumulation and partials.
Where it is fast: long caches at small batch (the splits fill the GPU), and GQA/MQA with
large G (K/V read once per group). Memory-bound: the goal is K/V bytes at copy bandwidth.
"""
from __future__ import annotations

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: E402


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): exact limits +-1 for large |x|, works compiled and interpreted.
    return 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0)


@triton.jit
def _decode_split_kernel(
    Q,  # [B, H, D] new-token queries, any strides
    K,  # [B, T, KVH, D] key cache
    V,  # [B, T, KVH, D] value cache
    LENS,  # [B] int32 cache lengths L
    BT,  # [B, pages_per_row] int32 block table (PAGED; unused otherwise), unit column stride
    O_PART,  # [B, H, S, D] fp32 out: normalized partial outputs (contiguous)
    LSE_PART,  # [B, H, S] fp32 out: log2-domain logsumexp of each share (contiguous)
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,  # stride_kb / stride_vb: per page when PAGED
    stride_tb,  # block table row stride (PAGED)
    max_len, KVH, num_splits,  # cache capacity T (pages_per_row * PAGE_SIZE when PAGED), kv heads, S
    num_pages,  # page pool size (PAGED)
    sm_scale, softcap, window,  # score scale; softcap c (HAS_SOFTCAP); window W (HAS_WINDOW)
    GROUP: tl.constexpr,  # G = H // KVH
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,  # D and next_power_of_2(D)
    BLOCK_H: tl.constexpr,  # G padded to a power of two >= 16 (tl.dot rows)
    BLOCK_N: tl.constexpr,  # cache positions per inner step
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,  # paged cache; PAGE_SIZE % BLOCK_N == 0
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, "tf32" (ignored) for 16-bit
    USE_PDL: tl.constexpr = False,  # launched as a programmatic dependent launch (sm_90+)
):
    split = tl.program_id(0)
    pid = tl.program_id(1)
    off_b = pid // KVH
    off_kvh = pid % KVH
    if USE_PDL:  # before the first load: what the kernel before it wrote is visible after the wait;
        gdc_wait()  # then the combine may launch (it waits for this grid's end before its loads)
        gdc_launch_dependents()
    length = tl.minimum(tl.maximum(tl.load(LENS + off_b), 0), max_len)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(length - window, 0)
    # This program's share of the blocks [lo // BLOCK_N, cdiv(L, BLOCK_N)).
    first = lo // BLOCK_N
    last = (length + BLOCK_N - 1) // BLOCK_N
    per_split = (tl.maximum(last - first, 0) + num_splits - 1) // num_splits
    blk_start = first + split * per_split
    blk_stop = tl.minimum(blk_start + per_split, last)

    rows = tl.arange(0, BLOCK_H)  # query head within the group
    row_ok = rows < GROUP
    head = off_kvh * GROUP + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = (Q + off_b.to(tl.int64) * stride_qb + head.to(tl.int64)[:, None] * stride_qh
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_H, BLOCK_D]
    k_base = K + off_kvh.to(tl.int64) * stride_kh
    v_base = V + off_kvh.to(tl.int64) * stride_vh
    if not PAGED:
        k_base += off_b.to(tl.int64) * stride_kb
        v_base += off_b.to(tl.int64) * stride_vb
    if HAS_SOFTCAP:
        qk_scale = sm_scale / softcap
    else:
        qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units

    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    for start_n in range(blk_start * BLOCK_N, blk_stop * BLOCK_N, BLOCK_N):
        kv_pos = start_n + offs_n  # [BLOCK_N]
        kv_ok = (kv_pos < length) & (kv_pos >= lo)
        ld_mask = kv_ok[:, None] & d_ok[None, :]
        if PAGED:  # the tile is slots [start_n % PAGE_SIZE, + BLOCK_N) of one page
            page = tl.load(BT + off_b.to(tl.int64) * stride_tb + start_n // PAGE_SIZE)
            page = tl.minimum(tl.maximum(page, 0), num_pages - 1).to(tl.int64)
            slot = (start_n % PAGE_SIZE + offs_n).to(tl.int64)[:, None]
            k_row = page * stride_kb + slot * stride_ks  # [BLOCK_N, 1]
            v_row = page * stride_vb + slot * stride_vs
        else:
            k_row = kv_pos.to(tl.int64)[:, None] * stride_ks
            v_row = kv_pos.to(tl.int64)[:, None] * stride_vs
        k = tl.load(k_base + k_row + offs_d[None, :] * stride_kd, mask=ld_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_H, BLOCK_N]
        if HAS_SOFTCAP:
            s = _tanh(s) * (softcap * 1.4426950408889634)
        s = tl.where(kv_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + v_row + offs_d[None, :] * stride_vd, mask=ld_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("-inf"))
    part_row = (off_b.to(tl.int64) * (KVH * GROUP) + head) * num_splits + split  # [BLOCK_H]
    tl.store(LSE_PART + part_row, lse, mask=row_ok)
    tl.store(O_PART + part_row[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_combine_kernel(
    O_PART,  # [B, H, S, D] fp32 partial outputs (contiguous)
    LSE_PART,  # [B, H, S] fp32 partial logsumexps, log2 domain
    O,  # [B, H, D] output, q's dtype
    stride_ob, stride_oh, stride_od,
    H, num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,  # next_power_of_2(num_splits): every share at once
    BLOCK_DC: tl.constexpr,  # head-dim columns per program (BLOCK_S * BLOCK_DC <= 8192)
    USE_PDL: tl.constexpr = False,  # launched as a programmatic dependent launch of the split
):
    pid = tl.program_id(0)  # b * H + h
    off_b = pid // H
    off_h = pid % H
    offs_d = tl.program_id(1) * BLOCK_DC + tl.arange(0, BLOCK_DC)
    d_ok = offs_d < HEAD_DIM
    row0 = pid.to(tl.int64) * num_splits
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < num_splits
    if USE_PDL:  # started while the split kernel ran: its partials are complete after this
        gdc_wait()
    # one shot: both loads in flight together, no loop of dependent round trips
    lse = tl.load(LSE_PART + row0 + offs_s, mask=s_ok, other=float("-inf"))
    part = tl.load(O_PART + (row0 + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                   mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_S, BLOCK_DC]
    m = tl.max(lse, 0)
    w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # L == 0: every share empty
    den = tl.sum(w, 0)
    o = tl.sum(part * w[:, None], 0) / tl.where(den > 0, den, 1.0)
    o_ptrs = O + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + offs_d * stride_od
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=d_ok)
