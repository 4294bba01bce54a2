"""Paged KV cache decode (block_table) against the float64 reference on the gathered cache.

A logical cache [batch, pages_per_row * page_size, kv_heads, head_dim] is scattered into a
shuffled page pool (every page used by one row only, some pool pages unused and filled with
1e3 so a wrong read shows); table entries past a row's used pages are -1 (never read). The
truth is the float64 reference on the logical cache; the accuracy rule is conftest's. Also:
the paged kernels equal the contiguous kernels bit for bit on the same logical cache and
tiles, jit with traced lengths and table, bad input, and an sm_90 AOT compile. pallas_tpu runs
in TPU interpret mode (race detector on in one test), beside jax's TPU paged_attention, and
lowers for TPU with jax.export.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from jax.experimental.pallas import tpu as pltpu

from kernels.decode import pallas_decode, pallas_tpu_paged_decode, triton_decode
from kernels.decode.pallas_tpu_decode import TpuDecodeBlocks, decode_attention_pallas_tpu
from kernels.decode.reference import _decode, decode_reference
from kernels.decode.reference_jax import _decode as _decode_jax

import test_decode
from conftest import assert_close


@dataclasses.dataclass(frozen=True)
class Case(test_decode.Case):
    """test_decode's case (max_len = pages_per_row * page_size) with its page size."""

    page_size: int = 16

    @property
    def pages_per_row(self) -> int:
        return self.max_len // self.page_size

    @property
    def id(self) -> str:
        return f"{super().id}_page{self.page_size}"


CASES = [
    Case(4, 1, 64, 80, (0, 1, 80, 37)),  # MQA; empty row, one token, full row, mid-page end
    Case(8, 2, 64, 96, (50, 96, 33), window=20, page_size=32),  # GQA, window across pages
    Case(4, 2, 80, 64, (64, 17), window=40, softcap=5.0),  # odd head_dim, both features
]
UNUSED_PAGES = 3
GARBAGE = 1e3  # unused pool pages: any read of them ruins the result


def _inputs(rng, c: Case):
    """float64 numpy q, logical k/v, lengths; pools k/v and the int32 block table."""
    b, t = len(c.lengths), c.max_len
    q = rng.standard_normal((b, c.heads, c.head_dim))
    k, v = (rng.standard_normal((b, t, c.kv_heads, c.head_dim)) for _ in range(2))
    lens = np.asarray(c.lengths, np.int64)
    n = b * c.pages_per_row + UNUSED_PAGES
    table = rng.permutation(n)[:b * c.pages_per_row].reshape(b, c.pages_per_row).astype(np.int32)
    pools = []
    for x in (k, v):
        pool = np.full((n, c.page_size, c.kv_heads, c.head_dim), GARBAGE)
        pool[table] = x.reshape(b, c.pages_per_row, c.page_size, c.kv_heads, c.head_dim)
        pools.append(pool)
    used = -(-lens // c.page_size)
    table[np.arange(c.pages_per_row)[None, :] >= used[:, None]] = -1  # never read
    return q, k, v, lens, pools[0], pools[1], table


def _truth(q, k, v, lens, c: Case, cast):
    """float64 reference on cast-rounded inputs, and the same math in the cast precision."""
    ts = [cast(x) for x in (q, k, v)]
    kw = dict(window=c.window, softcap=c.softcap, scale=c.head_dim**-0.5)
    as64 = lambda t: t.double() if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t, np.float64))  # noqa: E731
    ref = _decode(*map(as64, ts), torch.tensor(lens), **kw)  # torch bf16 has no numpy view; JAX arrays do
    return ref, ts, kw


def _torch_run(rng, c: Case, dtype, impl, device="cpu", **kw):
    """impl on ``device`` vs the float64 reference (CPU); baseline: torch in dtype on device."""
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    t = lambda x: torch.tensor(x).to(dtype)  # noqa: E731
    out = torch_ops.decode_attention(t(q).to(device), t(kp).to(device), t(vp).to(device),
                                     torch.tensor(lens, device=device),
                                     block_table=torch.tensor(table, device=device), window=c.window,
                                     softcap=c.softcap, impl=impl, **kw)
    ref, ts, kwargs = _truth(q, k, v, lens, c, t)
    assert out.dtype == dtype and out.shape == ref.shape
    base = _decode(*(x.to(device) for x in ts), torch.tensor(lens, device=device), upcast=False, **kwargs)
    assert_close(out, ref, base, dtype)
    assert torch.all(out.cpu()[torch.tensor(lens) == 0] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_triton_paged_matches_reference(rng, case, dtype):
    before = triton_decode.LAUNCHES["_decode_split_kernel"]
    _torch_run(rng, case, dtype, "triton")
    assert triton_decode.LAUNCHES["_decode_split_kernel"] == before + 1


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_torch_peers_gather_pages(rng, impl):
    _torch_run(rng, CASES[1], torch.float32, impl)


def test_triton_paged_equals_contiguous(rng):
    """Same logical cache, tiles and splits: the paged kernel gives the contiguous kernel's bits
    (the page and slot arithmetic changes addresses only); block_n 32 is capped to the page, 16."""
    c = Case(8, 2, 64, 96, (96, 0, 45, 16), window=50)
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    t = lambda x: torch.tensor(x).float()  # noqa: E731
    kw = dict(window=c.window, softcap=None, scale=0.125, num_splits=3,
              blocks=triton_decode.TritonDecodeBlocks(16, 4, 1))
    paged = triton_decode.decode_triton(t(q), t(kp), t(vp), torch.tensor(lens),
                                        block_table=torch.tensor(table), **kw)
    flat = triton_decode.decode_triton(t(q), t(k), t(v), torch.tensor(lens), **kw)
    assert torch.equal(paged, flat)
    big = dict(kw, blocks=triton_decode.TritonDecodeBlocks(32, 4, 1))  # capped to the page
    assert torch.equal(triton_decode.decode_triton(t(q), t(kp), t(vp), torch.tensor(lens),
                                                   block_table=torch.tensor(table), **big), flat)


# ---- JAX ------------------------------------------------------------------------------

J32, J16, JB16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)


def _jax_run(rng, c: Case, dtype, impl, fn=None):
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    j = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    fn = fn or (lambda *a: jax_ops.decode_attention(*a[:4], block_table=a[4], window=c.window,
                                                    softcap=c.softcap, impl=impl))
    out = fn(j(q), j(kp), j(vp), jnp.asarray(lens), jnp.asarray(table))
    ref, js, kw = _truth(q, k, v, lens, c, j)
    assert out.dtype == dtype and out.shape == tuple(ref.shape)
    assert_close(out, ref, _decode_jax(*js, jnp.asarray(lens), upcast=False, **kw), dtype.name)
    assert np.all(np.asarray(out, np.float32)[lens == 0] == 0)


PALLAS = [(CASES[0], J32), (CASES[1], J16), (CASES[2], JB16)]


@pytest.mark.parametrize("case,dtype", PALLAS, ids=[f"{c.id}-{d.name}" for c, d in PALLAS])
def test_pallas_paged_matches_reference(rng, case, dtype):
    _jax_run(rng, case, dtype, "pallas")


@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_jax_peers_gather_pages(rng, impl):
    _jax_run(rng, CASES[1], J32, impl)


def test_pallas_paged_under_jit(rng):
    """Traced lengths and table: the host checks are skipped, the kernel clamps (the -1 entries)."""
    c = CASES[0]
    fn = jax.jit(lambda q, k, v, L, bt: jax_ops.decode_attention(q, k, v, L, block_table=bt, impl="pallas"))
    _jax_run(rng, c, J32, "pallas", fn=fn)


def test_pallas_paged_equals_contiguous(rng):
    c = Case(4, 2, 64, 96, (96, 40, 0), window=70, page_size=32)
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    j = lambda x: jnp.asarray(x, J32)  # noqa: E731
    kw = dict(window=c.window, softcap=None, scale=0.125, num_splits=2,
              blocks=pallas_decode.PallasDecodeBlocks(64, 4, 1))  # capped to the page: 32
    paged = pallas_decode.decode_pallas(j(q), j(kp), j(vp), jnp.asarray(lens),
                                        block_table=jnp.asarray(table), **kw)
    flat = pallas_decode.decode_pallas(j(q), j(k), j(v), jnp.asarray(lens),
                                       **dict(kw, blocks=pallas_decode.PallasDecodeBlocks(32, 4, 1)))
    np.testing.assert_array_equal(np.asarray(paged), np.asarray(flat))


def test_pallas_paged_lowers_to_triton_for_cuda():
    """The compiled paged path lowers both kernels to Triton for CUDA (export; no GPU needed)."""
    import re

    from jax import export

    def f(q, k, v, L, bt):
        return pallas_decode.decode_pallas(q, k, v, L, window=100, softcap=5.0, scale=0.1,
                                           block_table=bt, interpret=False, num_splits=4)

    call = "__gpu$xla.gpu.triton"
    pool = jnp.zeros((37, 64, 2, 128), JB16)
    exported = export.export(jax.jit(f), platforms=("cuda",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(call)])(
        jnp.zeros((2, 8, 128), JB16), pool, pool, jnp.array([3, 200], jnp.int32),
        jnp.zeros((2, 4), jnp.int32))
    targets = re.findall(r"custom_call @(\S+)\(", exported.mlir_module())
    assert [t for t in targets if "triton" in t] == [call] * 2, targets


# ---- bad input -------------------------------------------------------------------------

ARRAYS = ("q", "k_cache", "v_cache", "cache_seqlens")


def _good():
    """2 rows, 3 pages of 16 each, a pool of 8 pages: row 0 uses 1 page, row 1 all 3."""
    return dict(q=torch.zeros(2, 4, 16), k_cache=torch.zeros(8, 16, 2, 16),
                v_cache=torch.zeros(8, 16, 2, 16), cache_seqlens=torch.tensor([3, 48]),
                block_table=torch.tensor([[5, -1, -1], [0, 7, 2]], dtype=torch.int32))


BAD = [
    ("table_float", dict(block_table=torch.zeros(2, 3)), TypeError,
     r"block_table dtype must be int32 \(or int64, converted\), got torch.float32"),
    ("table_int16", dict(block_table=torch.zeros(2, 3, dtype=torch.int16)), TypeError,
     r"block_table dtype must be int32"),
    ("table_1d", dict(block_table=torch.zeros(6, dtype=torch.int32)), ValueError,
     r"block_table must have shape \(2, pages_per_row >= 1\) \[batch, pages_per_row\], got \(6,\)"),
    ("table_batch", dict(block_table=torch.zeros(3, 3, dtype=torch.int32)), ValueError,
     r"block_table must have shape \(2, pages_per_row >= 1\).*got \(3, 3\)"),
    ("pool_3d", dict(k_cache=torch.zeros(8, 16, 32)), ValueError,
     r"k_cache must be 4-D \[num_pages, page_size, kv_heads, head_dim\] \(a page pool"),
    ("pool_shapes", dict(v_cache=torch.zeros(9, 16, 2, 16)), ValueError,
     r"k_cache and v_cache must have the same shape, got \(8, 16, 2, 16\) and \(9, 16, 2, 16\)"),
    ("too_long", dict(cache_seqlens=torch.tensor([3, 49])), ValueError,
     r"cache_seqlens must be <= max_len 48 \(pages_per_row \* page_size = 3 \* 16"),
    ("page_oob", dict(block_table=torch.tensor([[5, -1, -1], [0, 8, 2]], dtype=torch.int32)), ValueError,
     r"block_table\[1, 1\] must be a page index in \[0, 8\) \(k_cache dim 0, the pool\), got 8"),
    ("page_negative", dict(cache_seqlens=torch.tensor([17, 48])), ValueError,
     r"block_table\[0, 1\] must be a page index in \[0, 8\).*got -1 \(row 0 uses its first 2 pages"),
    ("page_size_24", dict(k_cache=torch.zeros(8, 24, 2, 16), v_cache=torch.zeros(8, 24, 2, 16)),
     ValueError, r"impl='triton' needs page_size \(k_cache dim 1 of a paged cache\) a power of two >= 16, got 24"),
    ("page_size_8", dict(k_cache=torch.zeros(8, 8, 2, 16), v_cache=torch.zeros(8, 8, 2, 16),
                         cache_seqlens=torch.tensor([3, 24])), ValueError, r"page_size .* got 8"),
]


@pytest.mark.parametrize("change,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_torch_bad_input(change, exc, match):
    args = {**_good(), **change}
    before = sum(triton_decode.LAUNCHES.values())
    with pytest.raises(exc, match=match):
        arrays = [args.pop(n) for n in ARRAYS]
        torch_ops.decode_attention(*arrays, **args, impl="triton")
    assert sum(triton_decode.LAUNCHES.values()) == before  # nothing launched


JAX_BAD = [b for b in BAD if b[0] in ("table_float", "table_batch", "too_long", "page_oob", "page_size_24")]


@pytest.mark.parametrize("change,exc,match", [b[1:] for b in JAX_BAD], ids=[b[0] for b in JAX_BAD])
def test_jax_bad_input(change, exc, match):
    args = {k: jnp.asarray(v.numpy()) for k, v in {**_good(), **change}.items()}
    with pytest.raises(exc, match=match.replace("torch.", "").replace("'triton'", "'pallas'")):
        arrays = [args.pop(n) for n in ARRAYS]
        jax_ops.decode_attention(*arrays, **args, impl="pallas")


def test_reference_takes_any_page_size_and_int64_tables(rng):
    """Page size 24 (refused by the kernels) through the validating reference; int64 table."""
    c = Case(4, 2, 32, 72, (70, 24, 0), page_size=24)
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    t = lambda x: torch.tensor(x).double()  # noqa: E731
    out = decode_reference(t(q), t(kp), t(vp), torch.tensor(lens), block_table=torch.tensor(table).long())
    ref = _decode(t(q), t(k), t(v), torch.tensor(lens), window=None, softcap=None, scale=32**-0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out64 = torch_ops.decode_attention(*(t(x).float() for x in (q, kp, vp)), torch.tensor(lens),
                                       block_table=torch.tensor(table).long(), impl="reference")
    torch.testing.assert_close(out64.double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype,page", [("float32", 12), ("bfloat16", 24), ("float16", 8)])
def test_pallas_tpu_refuses_page_size_off_the_sublane_tile(dtype, page):
    args = {k: jnp.asarray(v.numpy()) for k, v in _good().items()}
    args["q"] = args["q"].astype(dtype)
    args["k_cache"] = args["v_cache"] = jnp.zeros((8, page, 2, 16), dtype)
    args["cache_seqlens"] = jnp.asarray([3, 3 * page])
    sub = 8 if dtype == "float32" else 16
    with pytest.raises(ValueError, match=rf"impl='pallas_tpu' needs page_size \(k_cache dim 1 of a "
                       rf"paged cache\) a multiple of {sub} for {dtype} .*got {page}"):
        arrays = [args.pop(n) for n in ARRAYS]
        jax_ops.decode_attention(*arrays, **args, impl="pallas_tpu")


# ---- pallas_tpu: pages DMA'd through the scalar-prefetched table (TPU interpret mode) ------


@pytest.mark.parametrize("case,dtype", PALLAS, ids=[f"{c.id}-{d.name}" for c, d in PALLAS])
def test_pallas_tpu_paged_matches_reference(rng, case, dtype):
    """Default pages_per_block (5, 3 and 4 pages per step here): several page slots per step."""
    _jax_run(rng, case, dtype, "pallas_tpu")


def test_pallas_tpu_paged_equals_contiguous(rng):
    """Pages of 128 = the contiguous kernel's tile: the same online-softmax steps in the same
    order, so the same bits (the page arithmetic changes which DMA, not the math)."""
    c = Case(8, 2, 64, 384, (384, 200, 0, 129), window=150, page_size=128)
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    j = lambda x: jnp.asarray(x, J32)  # noqa: E731
    kw = dict(window=c.window, softcap=None, scale=0.125)
    paged = pallas_tpu_paged_decode.paged_decode_attention_pallas_tpu(
        j(q), j(kp), j(vp), jnp.asarray(lens), jnp.asarray(table),
        blocks=pallas_tpu_paged_decode.TpuPagedBlocks(2), **kw)
    flat = decode_attention_pallas_tpu(j(q), j(k), j(v), jnp.asarray(lens),
                                       blocks=TpuDecodeBlocks(128), **kw)
    np.testing.assert_array_equal(np.asarray(paged), np.asarray(flat))


def test_pallas_tpu_paged_under_jit(rng):
    """Traced lengths and table through the public op: host checks skipped, -1 entries clamped."""
    fn = jax.jit(lambda q, k, v, L, bt: jax_ops.decode_attention(q, k, v, L, block_table=bt,
                                                                 impl="pallas_tpu"))
    _jax_run(rng, Case(4, 1, 64, 64, (0, 64, 9), page_size=8), J32, "pallas_tpu", fn=fn)


def test_pallas_tpu_paged_race_detector(rng):
    """Two simulated TensorCores split the parallel (row, kv head) axes, race detector on."""
    from test_attention_pallas_tpu import _races_found

    c = Case(4, 2, 128, 64, (64, 30, 0, 17), window=40, page_size=16)
    interp = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    fn = jax.jit(lambda q, k, v, L, bt: pallas_tpu_paged_decode.paged_decode_attention_pallas_tpu(
        q, k, v, L, bt, window=c.window, softcap=None, scale=c.head_dim**-0.5,
        blocks=pallas_tpu_paged_decode.TpuPagedBlocks(3), interpret=interp))
    _jax_run(rng, c, J32, "pallas_tpu", fn=fn)
    assert not _races_found()


@pytest.mark.parametrize("n,window", [(1, None), (3, None), (2, 20), (4, 45)])
def test_pallas_tpu_index_map_fetches_each_visible_page_once(n, window):
    """Walk the grid's page axis for each row length: every page slot's block index changes
    only onto a visible page of the row, each visible page appears once in all, and a slot
    with no visible page keeps one index (one DMA for the whole row)."""
    page, per_row = 8, 7
    s = dataclasses.replace(_paged_statics(page, per_row, n), window=window)
    lens = np.arange(page * per_row + 1, dtype=np.int32)
    table = np.arange(len(lens) * per_row, dtype=np.int32)  # page (b, p) -> b * per_row + p
    for b, L in enumerate(lens):
        lo, hi = (0 if window is None else max(L - window, 0) // page), -(-L // page)
        fetched = []
        for i in range(n):
            seq = [int(pallas_tpu_paged_decode._page(b, j, i, lens, table, s)) - b * per_row
                   for j in range(-(-per_row // n))]
            dmas = [p for k, p in enumerate(seq) if k == 0 or p != seq[k - 1]]
            visible = [p for p in range(i, per_row, n) if lo <= p < hi]
            assert dmas == (visible or dmas[:1]), (L, i, seq)
            fetched += visible
        assert sorted(fetched) == list(range(lo, hi)), L


def _paged_statics(page, per_row, n):
    return pallas_tpu_paged_decode._Statics(
        max_len=page * per_row, head_dim=128, heads_per_block=1, block_kv=page, window=None,
        softcap=None, scale=1.0, interpret=False, pages_per_block=n, pages_per_row=per_row,
        num_pages=1 << 20)


def test_pallas_tpu_side_by_side_with_jax_paged_attention(rng):
    """jax's TPU paged_attention (pools [kv_heads, pages, page_size, D], no scale, no window or
    softcap; it casts K/V to bf16 in VMEM, hence bf16 inputs) and ours, MQA and GQA, in the same
    TPU interpret mode: both against float64, and against each other within the bound."""
    paged_attention = pytest.importorskip(
        "jax.experimental.pallas.ops.tpu.paged_attention",
        reason="this jax has no pallas.ops.tpu.paged_attention").paged_attention

    from conftest import ATOL_FLOOR, ERROR_RATIO, max_err

    for c in (Case(8, 1, 128, 64, (0, 1, 64, 37)), Case(8, 2, 128, 64, (17, 48, 64, 5))):
        q, k, v, lens, kp, vp, table = _inputs(rng, c)
        ref, js, kw = _truth(q, k, v, lens, c, lambda x: jnp.asarray(x, JB16))
        base = _decode_jax(*js, jnp.asarray(lens), upcast=False, **kw)
        j = lambda x: jnp.asarray(x, JB16)  # noqa: E731
        ours = jax_ops.decode_attention(j(q), j(kp), j(vp), jnp.asarray(lens),
                                        block_table=jnp.asarray(table), impl="pallas_tpu")
        with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
            theirs = paged_attention(j(q * kw["scale"]), j(kp).transpose(2, 0, 1, 3),
                                     j(vp).transpose(2, 0, 1, 3), jnp.asarray(lens, jnp.int32),
                                     jnp.asarray(np.maximum(table, 0)), pages_per_compute_block=4)
        for name, out in (("ours", ours), ("jax paged_attention", theirs)):
            assert_close(out, ref, base, "bfloat16", f"{c.id} {name}")
        bound = ERROR_RATIO * max_err(base, ref) + ATOL_FLOOR["bfloat16"]
        assert max_err(ours, theirs) <= bound, c.id


def test_pallas_tpu_paged_lowers_for_tpu_without_running():
    """jax.export to Mosaic for TPU: fp32 pages of 8 with all kv heads per block (D 64), bf16
    pages of 16 with one head per block (D 128), 4 page slots per step, window and softcap."""
    sds = jax.ShapeDtypeStruct
    for dtype, page, d, n in ((J32, 8, 64, 1), (JB16, 16, 128, 4)):
        fn = jax.jit(lambda q, k, v, L, bt: pallas_tpu_paged_decode.paged_decode_attention_pallas_tpu(
            q, k, v, L, bt, window=100, softcap=30.0, scale=0.1,
            blocks=pallas_tpu_paged_decode.TpuPagedBlocks(n), interpret=False))
        pool = sds((37, page, 2, d), dtype)
        text = jax.export.export(fn, platforms=["tpu"])(
            sds((2, 8, d), dtype), pool, pool, sds((2,), jnp.int32), sds((2, 12), jnp.int32)).mlir_module()
        assert text.count("tpu_custom_call") == 1, (dtype, page)


# ---- ahead-of-time compile for sm_90 and sm_80 (no GPU; a fresh process: tests/aot.py) -------

AOT = {"d128-bf16-g8-page64": (128, "bfloat16", None, None, 8, 64),
       "d128-fp16-mqa-page16": (128, "float16", None, None, 1, 16),
       "d80-bf16-win-cap-g4-page256": (80, "bfloat16", 4096, 30.0, 4, 256),
       "d64-fp32-mqa-page32": (64, "float32", None, None, 1, 32)}


# Spill audit entries (benchmarks.compile_report --sweep, page_size 64): fp32 spilled on
# sm_90 from head_dim 80 with 4 warps, as the contiguous kernel did.
AOT_SWEEP = [(f"decode paged64 hd{d} {dt}", cap, ["_decode_split_kernel"])
             for d, dt, cap in ((128, "fp32", 90), (256, "fp32", 90), (96, "fp32", 80), (256, "bf16", 80))]


def test_paged_triton_decode_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    """The paged split kernel in its default sm_90 configuration: compiles, no spills, tensor
    cores; then spill audit entries (fp32, sm_80) in the same compile process."""
    from aot import assert_compiled_clean, compile_in_subprocess, sass_mix, sweep_jobs

    jobs = {cid: {"module": "kernels.decode.triton_decode", "args": [d, f"torch.{dt}"],
                  "kwargs": {"window": w, "softcap": c, "group": g, "page_size": p},
                  "cap": 90, "kernels": ["_decode_split_kernel"]}
            for cid, (d, dt, w, c, g, p) in AOT.items()}
    sweep = sweep_jobs(AOT_SWEEP)
    report = compile_in_subprocess({**jobs, **sweep}, tmp_path)
    for job in sweep:
        kernels = report.pop(job)
        assert "error" not in kernels, (job, kernels.get("error"))
        assert_compiled_clean(kernels["_decode_split_kernel"], f"{job} paged split", cap=sweep[job]["cap"])
    for cid, kernels in report.items():
        assert "error" not in kernels, (cid, kernels.get("error"))
        r = kernels["_decode_split_kernel"]
        assert_compiled_clean(r, f"{cid} paged split")
        if "fp32" not in cid:  # fp32 runs ieee dots on the FMA units
            assert sass_mix(r, f"{cid} paged split")["HMMA"] > 0, f"{cid}: no tensor cores"
