"""int4 dequantizing matmul, Triton device code: Y = X @ dequant(QW).T with split-K.

Program (pid_m, pid_n, pid_k) computes the [BLOCK_M, BLOCK_N] tile of output rows/cols over
its share of the reduction [k_start, k_end) (a multiple of BLOCK_K). Per K step it loads
the packed bytes [BLOCK_N, BLOCK_K / 2] (uint8, contiguous along K: layout in ``spec.py``),
splits the nibbles in registers (low = even k, high = odd k; tl.join + reshape interleaves
them back into k order), dequantizes (q - z) * s with the one scale/zero row of the step's
group (BLOCK_K divides group_size, so a step never straddles two groups), casts to X's dtype
and feeds tl.dot with fp32 accumulation. The dequantized weight never exists in memory.
SPLIT_K == 1 writes Y in X's dtype. SPLIT_K > 1 (the GEMV-style decode config: few rows,
many programs along K) writes fp32 partials [SPLIT_K, M, N]; the last program of a tile to
finish (a counter per tile, atomic acq_rel after a CTA barrier) sums them in a fixed order,
writes Y in X's dtype and resets its counter to 0 (serial split-K, as CUTLASS and Marlin do):
one launch, no reduction kernel after it. LOCKS must hold zeros at launch; every launch
leaves them so. The partials' loop is software-pipelined (cp.async, 3 loads in flight), not
one L2 round trip per split.
What bounds a decode program (sm_90 compile facts; none of this is timed yet):
- Latency of the scales: the packed tiles stream through the pipeliner's cp.async stages,
  but a [BLOCK_N] scale row (128 B) is below cp.async's 4 B a thread, so loaded per step it
  is a blocking DRAM load every step. PRELOAD_GROUPS > 0 loads every scale (and zero) row of
  the split's K range as one [PRELOAD_GROUPS, BLOCK_N] tile before the loop; each step picks
  its row in registers (a where + sum, then a layout conversion: ~80 instructions a step).
  PREFETCH (where nothing is preloaded) keeps the one row a step but issues each step's load
  one step ahead, into registers: its latency hides under the step before, at no instructions
  a step (a software prefetch; the loop carries the next row).
- Instructions per code: the default step (64 codes a thread at BLOCK_N 64, BLOCK_K 128,
  4 warps) is 531 SASS instructions (628 with preloading): ~8 a code, where streaming the
  bytes at copy bandwidth leaves time for ~5 (H100) or ~4 (H200) at the full issue rate of
  128 thread-instructions a clock an SM (modeled: 2 codes a byte; consistent with the H200 sweep
  sweep-nvidia-h200-20261126T215348Z.json: m1 went 9.9 -> 18.7 us from 2048->2048 to
  2048->9984, ~0.95 TB/s on the 8.4 MB added, where the bf16 matmul added 3.2 TB/s).
SCALE_AFTER_DOT (16-bit X) takes 243 (322 with preloading): the codes become exact X-dtype
values with no float math per code -- MAGIC + q (0x4300 | q is 128 + q in bf16, 0x6400 | q
is 1024 + q in fp16), two codes per LOP3 in inline PTX (``_nibbles_ptx``), and for
symmetric codes one packed FMA per two codes makes them q - 8 -- and the step's group scale
multiplies the [BLOCK_M, BLOCK_N] product instead of every weight: acc += (x @ (q - 8)^T) * s,
or with zero points acc += (x @ (MAGIC + q)^T - rowsum(x) * (MAGIC + z)) * s. No weight is
rounded. The reduction order is permuted within each 8 codes (x alike) so each register
the PTX fills is one MMA k pair.
Limits: K % BLOCK_K == 0 (launcher guarantees it: in % group_size == 0 and
BLOCK_K | group_size); BLOCK_* powers of two >= 16 (tl.dot). 64-bit row offsets.
Fast where: decode (M <= 16) is bound by reading QW (0.5 B/weight); prefill runs on tensor
cores (wgmma on sm_90 for fp16/bf16) with the dequant hidden under the MMA.
"""
from __future__ import annotations

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before any @triton.jit: the interpreter when there is no GPU

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


def _nibbles_ptx(magic_bits: int, center: bool) -> tl.constexpr:
    """Inline PTX for four packed bytes ($4) -> the low nibbles of bytes (0, 1) and (2, 3) ($0,
    $1) and their high nibbles ($2, $3), each register two 16-bit floats MAGIC + q (bf16 0x4300
    = 128, fp16 0x6400 = 1024); ``center``: minus MAGIC + 8 as well, by one packed FMA (exact:
    q - 8). Marlin's dequantization: two PRMTs move bytes 0 and 1 (2 and 3) into the low byte of
    each 16-bit half, then one shift-and-mask-or (LOP3) makes two floats at once."""
    bf16 = magic_bits == 0x4300
    lines = ["{", ".reg .b32 t0, t1, u0, u1, one, off;",
             "prmt.b32 t0, $4, 0, 0x4140;", "prmt.b32 t1, $4, 0, 0x4342;",
             "shr.u32 u0, t0, 4;", "shr.u32 u1, t1, 4;"]
    if center:  # 1.0 and -(MAGIC + 8) in both halves
        lines += [f"mov.b32 one, {0x3F803F80 if bf16 else 0x3C003C00:#x};",
                  f"mov.b32 off, {0xC308C308 if bf16 else 0xE408E408:#x};"]
    for out, src in (("$0", "t0"), ("$1", "t1"), ("$2", "u0"), ("$3", "u1")):
        lines.append(f"lop3.b32 {out}, {src}, 0x000F000F, {magic_bits * 65537:#x}, 0xEA;")
        if center:
            lines.append(f"fma.rn.{'bf16x2' if bf16 else 'f16x2'} {out}, {out}, one, off;")
    return tl.constexpr("\n".join(lines + ["}"]))


_PTX_BF16, _PTX_BF16_CENTERED = _nibbles_ptx(0x4300, False), _nibbles_ptx(0x4300, True)
_PTX_FP16, _PTX_FP16_CENTERED = _nibbles_ptx(0x6400, False), _nibbles_ptx(0x6400, True)


@triton.jit
def _magic_nibbles(p, x, MAGIC_BITS: tl.constexpr, MAGIC: tl.constexpr, CENTER: tl.constexpr,
                   ASM: tl.constexpr):
    """uint8 [R, C] (two codes a byte) -> (low, high) nibbles as exact values in x's dtype (bf16
    or fp16): MAGIC + q, or with CENTER q - 8 (the symmetric codes' values). ASM (compiled):
    the PTX of ``_nibbles_ptx``, 8 (CENTER: 12) instructions for 8 codes; the interpreter (no
    PTX) computes the same values with plain integer and float ops."""
    if ASM:
        if MAGIC_BITS == 0x4300:
            if CENTER:
                asm: tl.constexpr = _PTX_BF16_CENTERED
            else:
                asm: tl.constexpr = _PTX_BF16
        else:
            if CENTER:
                asm: tl.constexpr = _PTX_FP16_CENTERED
            else:
                asm: tl.constexpr = _PTX_FP16
        lo, hi = tl.inline_asm_elementwise(asm=asm, constraints="=r,=r,=r,=r,r", args=[p],
                                           dtype=(x.dtype, x.dtype), is_pure=True, pack=4)
    else:
        lo = ((p & 0xF).to(tl.uint16) | MAGIC_BITS).to(x.dtype, bitcast=True)
        hi = ((p >> 4).to(tl.uint16) | MAGIC_BITS).to(x.dtype, bitcast=True)
        if CENTER:
            lo = (lo.to(tl.float32) - (MAGIC + 8.0)).to(x.dtype)
            hi = (hi.to(tl.float32) - (MAGIC + 8.0)).to(x.dtype)
    return lo, hi


@triton.jit
def _int4_matmul_kernel(
    X,  # [M, K] activations, row stride stride_xm, unit column stride
    QW,  # [N, K // 2] uint8 codes, row stride stride_qn: byte j = q[2j] | q[2j + 1] << 4
    S,  # [K // GROUP, N] scales, row stride stride_sg, unit column stride
    Z,  # [K // GROUP, N] zero points (same strides as S); unused when HAS_ZEROS is False
    Y,  # [M, N] in X's dtype, contiguous
    P,  # [SPLIT_K, M, N] fp32 partials (SPLIT_K > 1; else unused)
    LOCKS,  # int32 [cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)] zeros: per-tile arrival counters
    stride_xm, stride_qn, stride_sg,
    M, N, K, K_PER_SPLIT,  # K_PER_SPLIT: reduction length per split, a multiple of BLOCK_K
    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SCALE_AFTER_DOT: tl.constexpr = False,  # 16-bit X only: the group's affine map on the product
    MAGIC_BITS: tl.constexpr = 0,  # SCALE_AFTER_DOT: X-dtype bits of MAGIC (0x4300 bf16, 0x6400 fp16)
    MAGIC: tl.constexpr = 0.0,  # SCALE_AFTER_DOT: the value of those bits (128.0, 1024.0)
    ASM: tl.constexpr = False,  # SCALE_AFTER_DOT, compiled: the nibbles through inline PTX
    PRELOAD_GROUPS: tl.constexpr = 0,  # > 0: the split's scale/zero rows loaded once, before the K loop
    PREFETCH: tl.constexpr = False,  # PRELOAD_GROUPS == 0: each step's scale/zero row loaded a step ahead
):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_j = tl.arange(0, BLOCK_K // 2)
    x_rows = X + offs_m.to(tl.int64)[:, None] * stride_xm  # [BLOCK_M, 1] row pointers
    w_rows = QW + offs_n.to(tl.int64)[:, None] * stride_qn  # [BLOCK_N, 1]
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PRELOAD_GROUPS > 0:  # every group row this split touches, [PRELOAD_GROUPS, BLOCK_N], up front
        g_first = k_start // GROUP
        offs_g = tl.arange(0, PRELOAD_GROUPS)
        g_mask = ((g_first + offs_g) * GROUP < k_end)[:, None] & n_ok[None, :]
        g_ptrs = (g_first + offs_g)[:, None] * stride_sg + offs_n[None, :]
        s_all = tl.load(S + g_ptrs, mask=g_mask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z_all = tl.load(Z + g_ptrs, mask=g_mask, other=0.0).to(tl.float32)
    elif PREFETCH:  # the first step's rows; each step then issues the next step's loads
        g_next = (k_start // GROUP) * stride_sg
        s_next = tl.load(S + g_next + offs_n, mask=n_ok, other=0.0)
        if HAS_ZEROS:
            z_next = tl.load(Z + g_next + offs_n, mask=n_ok, other=0.0)
    for k0 in range(k_start, k_end, BLOCK_K):
        x = tl.load(x_rows + (k0 + offs_k)[None, :], mask=m_ok[:, None], other=0.0)
        p = tl.load(w_rows + (k0 // 2 + offs_j)[None, :], mask=n_ok[:, None], other=0)
        if not SCALE_AFTER_DOT:
            q = tl.reshape(tl.join(p & 0xF, p >> 4), (BLOCK_N, BLOCK_K))  # [BLOCK_N, BLOCK_K], k order
        if PRELOAD_GROUPS > 0:  # the step's row picked from registers: no load on the critical path
            pick = (offs_g == k0 // GROUP - g_first)[:, None]
            s = tl.sum(tl.where(pick, s_all, 0.0), 0)
        elif PREFETCH:  # this step's rows arrived during the last step; the next step's go out now
            s = s_next.to(tl.float32)
            if HAS_ZEROS:
                z_pre = z_next.to(tl.float32)
            more = n_ok & (k0 + BLOCK_K < k_end)  # nothing past the split's range
            g_next = ((k0 + BLOCK_K) // GROUP) * stride_sg
            s_next = tl.load(S + g_next + offs_n, mask=more, other=0.0)
            if HAS_ZEROS:
                z_next = tl.load(Z + g_next + offs_n, mask=more, other=0.0)
        else:  # a [BLOCK_N] row is too small for cp.async, so the pipeliner leaves it a blocking load
            g = (k0 // GROUP) * stride_sg  # scales hold in * out / GROUP < 2^31 elements
            s = tl.load(S + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            if PRELOAD_GROUPS > 0:
                z = tl.sum(tl.where(pick, z_all, 0.0), 0)
            elif PREFETCH:
                z = z_pre
            else:
                z = tl.load(Z + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        else:
            z = tl.full((BLOCK_N,), 8.0, tl.float32)
        if SCALE_AFTER_DOT:  # exact code values in X's dtype; the group's scale on the product
            # symmetric: the codes' values q - 8 exactly; asymmetric: MAGIC + q, and the zero
            # point comes off the product: x @ (MAGIC + q)^T - rowsum(x) * (MAGIC + z)
            lo, hi = _magic_nibbles(p, x, MAGIC_BITS, MAGIC, not HAS_ZEROS, ASM)
            # the reduction runs in the order k' = 8m + 4h + i for code k = 8m + 2i + h (h: high
            # nibble), x permuted alike: then each register the PTX fills (two low or two high
            # nibbles of neighbouring bytes) is one of the MMA's k pairs, with no repacking
            lo4 = tl.reshape(lo, (BLOCK_N, BLOCK_K // 8, 4))
            hi4 = tl.reshape(hi, (BLOCK_N, BLOCK_K // 8, 4))
            wq = tl.reshape(tl.permute(tl.join(lo4, hi4), (0, 1, 3, 2)), (BLOCK_N, BLOCK_K))
            xp = tl.reshape(tl.permute(tl.reshape(x, (BLOCK_M, BLOCK_K // 8, 4, 2)), (0, 1, 3, 2)),
                            (BLOCK_M, BLOCK_K))
            part = tl.dot(xp, tl.trans(wq), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
            if HAS_ZEROS:
                x_sum = tl.sum(x.to(tl.float32), 1)  # [BLOCK_M]
                part -= x_sum[:, None] * (z + MAGIC)[None, :]
            acc += part * s[None, :]
        else:
            # code q as a float without I2F (a quarter-rate conversion): q | 0x4B000000 is 2^23 + q
            # exactly. Symmetric: q - 8 = big - (2^23 + 8), one FADD. Zero points: big - 2^23 is q
            # exactly, then (q - z) (z keeps any fraction: 2^23 + z would round it to an integer)
            big = (q.to(tl.uint32) | 0x4B000000).to(tl.float32, bitcast=True)
            if HAS_ZEROS:
                w = (((big - 8388608.0) - z[:, None]) * s[:, None]).to(X.dtype.element_ty)
            else:
                w = ((big - 8388616.0) * s[:, None]).to(X.dtype.element_ty)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    out = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(Y + out, acc.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.store(P + pid_k.to(tl.int64) * M * N + out, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial stored before the release below
        lock = LOCKS + pid_m * tl.num_programs(1) + pid_n
        arrived = tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # the tile's last split: the others' partials are visible
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for sk in tl.range(0, SPLIT_K, num_stages=4):  # fixed order: the same sum whichever split came last
                total += tl.load(P + sk * M * N + out, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(Y + out, total.to(Y.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock, 0, sem="relaxed", scope="gpu")  # ready for the next launch
