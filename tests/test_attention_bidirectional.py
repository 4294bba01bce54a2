"""Bidirectional attention within image blocks (prefix-LM style, ``bidirectional_ids``).

Ground truth is built here, independently of the code under test: a float64 brute-force mask
from the ids (query i sees key j when j <= i's causal position, or j's query index lies in
i's contiguous run of equal ids >= 0 at or after i; a window counts back from the last key so
seen), then a plain float64 softmax with torch autograd for dq, dk, dv. Kernels (Triton in
fp32/fp16 through the interpreter, Pallas in fp32/bf16 in interpret mode), the references and
the peers (SDPA, jax.nn) are held to it with conftest's rule (2x the same-precision framework
error plus the dtype floor). Also: all-text ids (-1) give plain causal bit for bit, the q_end
helpers agree with the brute force, and bad ids / variants that cannot take them are refused
before any launch.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.attention import reference, reference_jax, triton_attention
from kernels.attention.pallas_attention import PallasAttentionBlocks, attention_pallas
from kernels.attention.triton_attention import TritonAttentionBlocks

from attention_cases import jax_vjp
from conftest import assert_close

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


# --- ground truth, from the ids directly --------------------------------------------------

def brute_q_end(ids: np.ndarray, kv_len: int) -> np.ndarray:
    """[B, Sq] the last key position each query sees, by walking the ids (no vector tricks)."""
    b, n = ids.shape
    out = np.zeros((b, n), np.int64)
    for r in range(b):
        for i in range(n):
            last = i
            if ids[r, i] >= 0:
                while last + 1 < n and ids[r, last + 1] == ids[r, i]:
                    last += 1
            out[r, i] = last + (kv_len - n)
    return out


def brute_mask(ids, kv_len, window=None, q_seg=None, kv_seg=None) -> np.ndarray:
    """[B, Sq, Skv] bool: causal, plus the rest of the query's own image run; a window counts
    back from the last key seen; segment ids on top."""
    b, n = ids.shape
    shift = kv_len - n
    mask = np.zeros((b, n, kv_len), bool)
    for r in range(b):
        for i in range(n):
            run_last = i  # walk to the last query of i's run of equal ids
            while ids[r, i] >= 0 and run_last + 1 < n and ids[r, run_last + 1] == ids[r, i]:
                run_last += 1
            for j in range(kv_len):
                jq = j - shift  # the query index at key position j
                mask[r, i, j] = j <= i + shift or (ids[r, i] >= 0 and i <= jq <= run_last)
            if window is not None:
                seen = np.nonzero(mask[r, i])[0]
                if seen.size:
                    mask[r, i, : max(seen.max() - window + 1, 0)] = False
    if q_seg is not None:
        mask &= np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]
    return mask


def truth(q, k, v, do, mask, *, scale, softcap=None):
    """Float64 (o, dq, dk, dv): a plain masked softmax; rows that see no key give 0."""
    t = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (q, k, v)]
    qt, kt, vt = t
    g = qt.shape[2] // kt.shape[2]
    kr, vr = kt.repeat_interleave(g, 2), vt.repeat_interleave(g, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", qt, kr) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    m = torch.tensor(mask)[:, None]
    s = s.masked_fill(~m, float("-inf"))
    mx = s.amax(-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))) * m
    l = p.sum(-1, keepdim=True)
    p = p / torch.where(l > 0, l, torch.ones_like(l))
    o = torch.einsum("bhqk,bkhd->bqhd", p, vr)
    o.backward(torch.tensor(np.asarray(do, np.float64)))
    return o.detach(), *(x.grad for x in t)


def image_ids(batch, q_len, spans) -> np.ndarray:
    """int64 [batch, q_len]: -1 (text) except spans [(row, start, stop, id)]."""
    ids = np.full((batch, q_len), -1, np.int64)
    for r, a, b, v in spans:
        ids[r, a:b] = v
    return ids


def random_ids(rng, batch, q_len, max_blocks=3) -> np.ndarray:
    """Text with 1..max_blocks image runs per row at random places and ids 0-2: runs may
    overlap, touch with another id, merge, or repeat an id after text (separate runs)."""
    ids = np.full((batch, q_len), -1, np.int64)
    for r in range(batch):
        for _ in range(rng.integers(1, max_blocks + 1)):
            a = int(rng.integers(0, q_len))
            b = int(rng.integers(a + 1, min(q_len, a + max(2, q_len // 2)) + 1))
            ids[r, a:b] = rng.integers(0, 3)
    return ids


def segments(rng, batch, q_len, kv_len):
    """Sorted (packed) segment ids; the queries' are the last q_len keys'."""
    kv = np.sort(rng.integers(0, 3, (batch, kv_len)), axis=1)
    return kv[:, kv_len - q_len:], kv


@dataclass(frozen=True)
class Case:
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    spans: tuple = ()  # image_ids spans; () draws random_ids
    window: int | None = None
    softcap: float | None = None
    segments: bool = False

    @property
    def id(self) -> str:
        kind = "mqa" if self.kv_heads == 1 else "mha" if self.kv_heads == self.heads else "gqa"
        flags = [n for n, on in (("rand", not self.spans), (f"win{self.window}", self.window),
                                 (f"cap{self.softcap}", self.softcap), ("seg", self.segments)) if on]
        return "-".join([f"{kind}{self.heads}x{self.kv_heads}", f"b{self.batch}",
                         f"{self.q_len}x{self.kv_len}", f"d{self.head_dim}", *flags])


CASES = [
    Case(1, 1, 1, 2, 1, 16, spans=((0, 0, 1, 0),)),  # one query, one key, an image of one
    # start and end of the sequence, batch rows differ (MQA)
    Case(2, 17, 17, 4, 1, 32, spans=((0, 0, 6, 0), (0, 12, 17, 1), (1, 3, 9, 5), (1, 9, 11, 2))),
    # middle blocks spanning the 32-row/key interpreter tiles, adjacent runs, GQA + softcap
    Case(2, 100, 100, 4, 2, 32, spans=((0, 20, 70, 0), (0, 70, 75, 1), (1, 0, 40, 3), (1, 60, 99, 3)),
         softcap=3.0),
    # a cached prefix (q_len < kv_len), window and segments
    Case(1, 37, 100, 4, 2, 32, spans=((0, 5, 30, 0),), window=9, segments=True),
    Case(2, 50, 70, 2, 2, 16, window=13),  # random blocks, MHA
    Case(1, 50, 30, 4, 1, 16, spans=((0, 10, 35, 0),)),  # q_len > kv_len: early rows see no key
]


def _ids(rng, c: Case):
    return image_ids(c.batch, c.q_len, c.spans) if c.spans else random_ids(rng, c.batch, c.q_len)


def _numpy_inputs(rng, c: Case):
    shapes = [(c.batch, c.q_len, c.heads, c.head_dim), (c.batch, c.kv_len, c.kv_heads, c.head_dim),
              (c.batch, c.kv_len, c.kv_heads, c.head_dim), (c.batch, c.q_len, c.heads, c.head_dim)]
    q, k, v, do = (rng.standard_normal(s) for s in shapes)
    seg = segments(rng, c.batch, c.q_len, c.kv_len) if c.segments else (None, None)
    return (q, k, v, do), _ids(rng, c), seg


# --- PyTorch: Triton, the reference, SDPA -------------------------------------------------

def _torch_run(fn, arrays, dtype):
    q, k, v, do = arrays
    ts = [torch.tensor(x).to(dtype).requires_grad_() for x in (q, k, v)]
    o = fn(*ts)
    o.backward(torch.tensor(do).to(dtype))
    return (o.detach(), *(t.grad for t in ts))


def _rounded(arrays, dtype):
    return [torch.tensor(x).to(dtype).double().numpy() for x in arrays]


def _check_torch(rng, c: Case, dtype, impl="triton", blocks=None):
    arrays, ids, (q_seg, kv_seg) = _numpy_inputs(rng, c)
    arrays = _rounded(arrays, dtype)
    scale = c.head_dim ** -0.5
    seg = None if q_seg is None else (torch.tensor(q_seg), torch.tensor(kv_seg))
    want = truth(*arrays, brute_mask(ids, c.kv_len, c.window, q_seg, kv_seg), scale=scale,
                 softcap=c.softcap)
    # same-precision framework error: the plain reference in dtype, on the brute-force q_end
    base = _torch_run(lambda q, k, v: reference._attention(
        q, k, v, causal=True, window=c.window, softcap=c.softcap, scale=scale,
        q_segment_ids=None if seg is None else seg[0], kv_segment_ids=None if seg is None else seg[1],
        upcast=False, q_end=torch.tensor(brute_q_end(ids, c.kv_len))), arrays, dtype)
    extra = {} if blocks is None else dict(blocks=blocks)
    got = _torch_run(lambda q, k, v: torch_ops.attention(
        q, k, v, causal=True, window=c.window, softcap=c.softcap, scale=scale, segment_ids=seg,
        impl=impl, bidirectional_ids=torch.tensor(ids), **extra), arrays, dtype)
    for name, g, r, b in zip(("out", "dq", "dk", "dv"), got, want, base):
        assert g.dtype == dtype, f"{name} dtype {g.dtype} != {dtype}"
        assert_close(g, r, b, dtype, name)


# each case in one dtype, alternating (fp32's ieee dots and fp16's tensor-core path both run;
# test_triton_small_tiles adds four tilings)
TRITON_GRID = [(c, (torch.float32, torch.float16)[i % 2]) for i, c in enumerate(CASES)]


@pytest.mark.parametrize("case,dtype", TRITON_GRID,
                         ids=[f"{c.id}-{'fp32' if d == torch.float32 else 'fp16'}" for c, d in TRITON_GRID])
def test_triton_matches_float64(rng, case, dtype):
    before = triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"]
    _check_torch(rng, case, dtype)
    assert triton_attention.LAUNCHES["_attn_bwd_dkdv_kernel"] > before  # the Triton path ran


@pytest.mark.parametrize("blocks", [
    TritonAttentionBlocks(16, 16, 4, 1),  # many row/key blocks: the binary search and loop splits
    TritonAttentionBlocks(16, 16, 4, 1, dkdv_splits=3, dkdv_passes=2),
    TritonAttentionBlocks(16, 32, 4, 1, dq_atomic=True),
    TritonAttentionBlocks(32, 16, 4, 1, dq_block_m=16, dq_block_n=32),
    TritonAttentionBlocks(16, 16, 4, 1, dkdv_per_head=True),  # q_end bounds in positions of one head
], ids=["16x16", "splits3-two-pass", "dq-atomic", "dq-own-tile", "per-head"])
def test_triton_small_tiles(rng, blocks):
    c = Case(2, 40, 56, 4, 2, 16, spans=((0, 5, 27, 0), (0, 27, 30, 1), (1, 18, 39, 2)), window=13)
    _check_torch(rng, c, torch.float32, blocks=blocks)


# MHA, queries 0-1 one image, the rest text; with 16x16 tiles, shift 1 and 14 = -2 mod 16 and
# windows 18 and 31 (2 and -1 mod 16) put a q_end or window edge next to a block edge, where
# an off-by-one in a bound of the q_end binary search or block skip changes the result
RESIDUE_CASES = [Case(1, 32, 33, 1, 1, 16, spans=((0, 0, 2, 0),)), Case(1, 32, 46, 1, 1, 16, spans=((0, 0, 2, 0),)),
                 Case(1, 48, 48, 1, 1, 16, spans=((0, 0, 2, 0),), window=18),
                 Case(1, 48, 48, 1, 1, 16, spans=((0, 0, 2, 0),), window=31)]


@pytest.mark.parametrize("case", RESIDUE_CASES, ids=lambda c: c.id)
def test_triton_bounds_at_block_residues(rng, case):
    _check_torch(rng, case, torch.float32, blocks=TritonAttentionBlocks(16, 16, 4, 1))


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[5]], ids=lambda c: c.id)
def test_torch_reference_and_sdpa_match_float64(rng, case, impl):
    if impl == "sdpa" and case.softcap is not None:
        case = Case(**{**case.__dict__, "softcap": None})  # SDPA refuses softcap
    _check_torch(rng, case, torch.float32, impl=impl)


def test_public_torch_reference(rng):
    """reference.attention_reference validates and takes bidirectional_ids like the API."""
    c = CASES[1]
    arrays, ids, _ = _numpy_inputs(rng, c)
    q, k, v = (torch.tensor(x) for x in arrays[:3])
    got = reference.attention_reference(q, k, v, causal=True, bidirectional_ids=torch.tensor(ids))
    want = truth(*arrays, brute_mask(ids, c.kv_len), scale=c.head_dim ** -0.5)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["triton", "reference", "sdpa"])
def test_all_text_ids_equal_plain_causal_torch(rng, impl):
    """ids all -1: q_end is the causal position, so every impl gives plain causal bit for bit
    (q_len < kv_len so SDPA takes its explicit mask both ways)."""
    c = Case(2, 33, 45, 4, 2, 32)
    arrays, _, _ = _numpy_inputs(rng, c)
    text = torch.full((2, 33), -1)
    plain = _torch_run(lambda q, k, v: torch_ops.attention(q, k, v, causal=True, impl=impl), arrays,
                       torch.float32)
    bidir = _torch_run(lambda q, k, v: torch_ops.attention(q, k, v, causal=True, impl=impl,
                                                           bidirectional_ids=text), arrays, torch.float32)
    for name, a, b in zip(("out", "dq", "dk", "dv"), bidir, plain):
        assert torch.equal(a, b), name


def test_torch_compile_and_custom_op_take_q_end(rng):
    """fullgraph torch.compile through torch_ops.attention (q_end computed in the graph, no host
    sync) equals eager; the custom op's schema, fake kernel and autograd take q_end."""
    c = Case(1, 9, 12, 4, 2, 16, spans=((0, 2, 6, 0),))
    arrays, ids, _ = _numpy_inputs(rng, c)
    ids_t = torch.tensor(ids)

    def fn(q, k, v):
        return torch_ops.attention(q, k, v, causal=True, bidirectional_ids=ids_t)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    for name, g, e in zip(("out", "dq", "dk", "dv"), _torch_run(compiled, arrays, torch.float32),
                          _torch_run(fn, arrays, torch.float32)):
        torch.testing.assert_close(g, e, rtol=0, atol=0, msg=name)
    q, k, v = (torch.tensor(x).float().requires_grad_() for x in arrays[:3])
    blocks = TritonAttentionBlocks(16, 16, 4, 1).as_list()
    q_end = reference.bidirectional_q_end(ids_t, c.kv_len)
    torch.library.opcheck(torch.ops.gemini_kernels.flash_attention_fwd.default,
                          (q, k, v, None, None, True, None, None, 0.25, blocks, blocks, q_end),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_q_end_helpers_match_brute_force(rng):
    for q_len, kv_len in ((1, 1), (17, 17), (40, 64), (30, 20)):
        ids = random_ids(rng, 3, q_len)
        want = brute_q_end(ids, kv_len)
        got_t = reference.bidirectional_q_end(torch.tensor(ids), kv_len)
        got_j = reference_jax.bidirectional_q_end(jnp.asarray(ids, jnp.int32), kv_len)
        assert got_t.dtype == torch.int32 and got_j.dtype == jnp.int32
        np.testing.assert_array_equal(got_t.numpy(), want)
        np.testing.assert_array_equal(np.asarray(got_j), want)
        assert np.all(np.diff(want, axis=1) >= 0)  # what the kernels' bounds rely on
        assert np.all(want >= np.arange(q_len) + kv_len - q_len)


# --- JAX: Pallas, the reference, jax.nn ---------------------------------------------------

def _jax_run(fn, arrays, dtype):
    return jax_vjp(fn, *(jnp.asarray(x, dtype) for x in arrays))


def _check_jax(rng, c: Case, dtype, impl="pallas", blocks=None):
    arrays, ids, (q_seg, kv_seg) = _numpy_inputs(rng, c)
    arrays = [np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64) for x in arrays]
    scale = c.head_dim ** -0.5
    seg = None if q_seg is None else (jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32))
    want = truth(*arrays, brute_mask(ids, c.kv_len, c.window, q_seg, kv_seg), scale=scale,
                 softcap=c.softcap)
    flags = dict(causal=True, window=c.window, softcap=c.softcap, scale=scale)
    base = _jax_run(lambda q, k, v: reference_jax._attention(
        q, k, v, q_segment_ids=None if seg is None else seg[0], kv_segment_ids=None if seg is None else seg[1],
        upcast=False, q_end=jnp.asarray(brute_q_end(ids, c.kv_len), jnp.int32), **flags), arrays, dtype)
    ids_j = jnp.asarray(ids, jnp.int32)
    if blocks is not None:  # the kernel directly, with its tiles (q_end as jax_ops computes it)
        q_end = reference_jax.bidirectional_q_end(ids_j, c.kv_len)
        fn = lambda q, k, v: attention_pallas(  # noqa: E731
            q, k, v, q_segment_ids=None if seg is None else seg[0],
            kv_segment_ids=None if seg is None else seg[1], blocks=blocks, q_end=q_end, **flags)
    else:
        fn = lambda q, k, v: jax_ops.attention(  # noqa: E731
            q, k, v, segment_ids=seg, impl=impl, bidirectional_ids=ids_j, **flags)
    got = _jax_run(fn, arrays, dtype)
    for name, g, r, b in zip(("out", "dq", "dk", "dv"), got, want, base):
        assert g.dtype == dtype, f"{name} dtype {g.dtype} != {dtype}"
        assert_close(g, r, b, dtype, name)


SMALL = PallasAttentionBlocks(block_q=16, block_k=16)
PALLAS_CASES = [
    (CASES[1], jnp.float32, None),
    (Case(2, 45, 45, 4, 2, 32, spans=((0, 10, 35, 0), (0, 35, 38, 1), (1, 0, 20, 3), (1, 30, 44, 3)),
          softcap=3.0), jnp.bfloat16, SMALL),  # blocks across tile edges, adjacent runs, softcap, GQA
    (CASES[3], jnp.float32, SMALL),  # cached prefix, window, segments
    (CASES[5], jnp.bfloat16, SMALL),  # q_len > kv_len, MQA
]


@pytest.mark.parametrize("case,dtype,blocks", PALLAS_CASES,
                         ids=[f"{c.id}-{jnp.dtype(d).name}-{'small' if b else 'default'}"
                              for c, d, b in PALLAS_CASES])
def test_pallas_matches_float64(rng, case, dtype, blocks):
    _check_jax(rng, case, jnp.dtype(dtype), blocks=blocks)


# 32x46 left out: seconds per shape in interpret mode, and test_pallas_matches_float64 catches
# an off-by-one in the count it probes (c_first + block_k - 1)
@pytest.mark.parametrize("case", RESIDUE_CASES[:1] + RESIDUE_CASES[2:], ids=lambda c: c.id)
def test_pallas_bounds_at_block_residues(rng, case):
    _check_jax(rng, case, jnp.dtype(jnp.float32), blocks=SMALL)


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("case", [CASES[3], CASES[4]], ids=lambda c: c.id)
def test_jax_reference_and_xla_match_float64(rng, case, impl):
    _check_jax(rng, case, jnp.dtype(jnp.float32), impl=impl)


def test_public_jax_reference(rng):
    c = CASES[1]
    arrays, ids, _ = _numpy_inputs(rng, c)
    q, k, v = (jnp.asarray(x, jnp.float32) for x in arrays[:3])
    got = reference_jax.attention_reference(q, k, v, causal=True, bidirectional_ids=jnp.asarray(ids, jnp.int32))
    want = truth(*[np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in arrays],
                 brute_mask(ids, c.kv_len), scale=c.head_dim ** -0.5)[0]
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", ["pallas", "reference", "xla"])
def test_all_text_ids_equal_plain_causal_jax(rng, impl):
    c = Case(1, 20, 29, 2, 1, 16)
    arrays, _, _ = _numpy_inputs(rng, c)
    text = jnp.full((1, 20), -1, jnp.int32)
    plain = _jax_run(lambda q, k, v: jax_ops.attention(q, k, v, causal=True, impl=impl), arrays, jnp.float32)
    bidir = _jax_run(lambda q, k, v: jax_ops.attention(q, k, v, causal=True, impl=impl, bidirectional_ids=text),
                     arrays, jnp.float32)
    for name, a, b in zip(("out", "dq", "dk", "dv"), bidir, plain):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


# --- refusals -----------------------------------------------------------------------------

def _torch_qkv():
    return torch.zeros(1, 8, 2, 16), torch.zeros(1, 8, 1, 16), torch.zeros(1, 8, 1, 16)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(causal=False, bidirectional_ids=torch.zeros(1, 8, dtype=torch.int64)), ValueError,
     "bidirectional_ids needs causal=True"),
    (dict(causal=True, bidirectional_ids=torch.zeros(1, 7, dtype=torch.int64)), ValueError,
     r"bidirectional_ids must have shape \[batch, q_len\] = \(1, 8\), got \(1, 7\)"),
    (dict(causal=True, bidirectional_ids=torch.zeros(1, 8)), TypeError,
     "bidirectional_ids must be an integer array, got torch.float32"),
    (dict(causal=True, bidirectional_ids=torch.zeros(1, 8, dtype=torch.bool)), TypeError,
     "bidirectional_ids must be an integer array"),
], ids=["not-causal", "shape", "float", "bool"])
@pytest.mark.parametrize("impl", ["triton", "reference", "sdpa"])
def test_bad_ids_refused_torch(kwargs, err, match, impl):
    before = dict(triton_attention.LAUNCHES)
    with pytest.raises(err, match=match):
        torch_ops.attention(*_torch_qkv(), impl=impl, **kwargs)
    assert dict(triton_attention.LAUNCHES) == before


@pytest.mark.parametrize("blocks", [
    TritonAttentionBlocks(64, 64, 4, 2, tma=True),
    TritonAttentionBlocks(128, 128, 8, 2, gluon=1),
    (TritonAttentionBlocks(32, 32, 4, 1),
     TritonAttentionBlocks(64, 128, 8, 2, dq_block_m=64, dq_block_n=64, gluon_dkdv=True)),
    (TritonAttentionBlocks(32, 32, 4, 1),
     TritonAttentionBlocks(32, 128, 8, 2, dq_atomic=True, dq_tma=True)),
], ids=["tma", "gluon-fwd", "gluon-dkdv", "dq-tma"])
def test_gluon_and_tma_blocks_refused(blocks):
    before = dict(triton_attention.LAUNCHES)
    with pytest.raises(ValueError, match="blocks: .*bidirectional_ids"):
        torch_ops.attention(*_torch_qkv(), causal=True, blocks=blocks,
                            bidirectional_ids=torch.zeros(1, 8, dtype=torch.int64))
    assert dict(triton_attention.LAUNCHES) == before


def test_autotune_times_pointer_tiles_with_q_end(rng):
    """blocks="autotune" with bidirectional ids: its own problem class, timed with q_end over
    pointer-tile candidates only (the interpreter's TMA form is replaced), output and gradients
    against float64 as any Triton run; GPU candidate lists narrowed by pointer_tiles."""
    from kernels.attention import triton_autotune

    triton_autotune.TUNING.clear()
    c = CASES[1]  # batch 2, MQA, four image runs: the problem class, not the size, is the point
    _check_torch(rng, c, torch.float32, blocks="autotune")
    picks = {k: v for k, v in triton_autotune.TUNING.items() if "bidirectional" in k}
    assert len(picks) == 2  # forward and backward
    for entry in picks.values():
        tried = [b for b, _, _ in entry["times_ms"]]
        assert len(tried) == 2 and not any(b.tma or b.gluon or b.gluon_dkdv or b.dq_tma for b in tried)
    gpu = triton_attention.candidate_blocks(128, torch.bfloat16, backward=False, capability=(9, 0))
    kept = triton_attention.pointer_tiles(gpu)
    assert kept and len(kept) < len(gpu) and all(not (b.gluon or b.tma) for b in kept)
    triton_autotune.TUNING.clear()


def _jax_qkv():
    return jnp.zeros((1, 8, 2, 16)), jnp.zeros((1, 8, 1, 16)), jnp.zeros((1, 8, 1, 16))


@pytest.mark.parametrize("impl", ["pallas_mgpu", "pallas_tpu"])
def test_mosaic_impls_refuse_ids(impl):
    with pytest.raises(ValueError, match=f"bidirectional_ids: impl='{impl}' cannot take it"):
        jax_ops.attention(*_jax_qkv(), causal=True, impl=impl,
                          bidirectional_ids=jnp.zeros((1, 8), jnp.int32))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(causal=False, bidirectional_ids=jnp.zeros((1, 8), jnp.int32)), ValueError, "needs causal=True"),
    (dict(causal=True, bidirectional_ids=jnp.zeros((2, 8), jnp.int32)), ValueError, "must have shape"),
    (dict(causal=True, bidirectional_ids=jnp.zeros((1, 8), jnp.float32)), TypeError, "must be an integer array"),
], ids=["not-causal", "shape", "float"])
@pytest.mark.parametrize("impl", ["pallas", "reference", "xla"])
def test_bad_ids_refused_jax(kwargs, err, match, impl):
    with pytest.raises(err, match=f"bidirectional_ids {match}"):
        jax_ops.attention(*_jax_qkv(), impl=impl, **kwargs)
