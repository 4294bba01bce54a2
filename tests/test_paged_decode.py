"""Paged KV cache decode (block_table) against the float64 reference on the gathered cache.

A logical cache [batch, pages_per_row * page_size, kv_heads, head_dim] is scattered into a
shuffled page pool (every page used by one row only, some pool pages unused and filled with
1e3 so a wrong read shows); table entries past a row's used pages are -1 (never read). The
truth is the float64 reference on the logical cache; the accuracy rule is conftest's. Also:
the paged kernels equal the contiguous kernels bit for bit on the same logical cache and
tiles, jit with traced lengths and table, bad input, and an sm_90 AOT compile.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.decode import pallas_decode, triton_decode
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
    ref = _decode(*(torch.from_numpy(np.asarray(t, np.float64)) for t in ts), torch.tensor(lens), **kw)
    return ref, ts, kw


def _torch_run(rng, c: Case, dtype, impl, **kw):
    q, k, v, lens, kp, vp, table = _inputs(rng, c)
    t = lambda x: torch.tensor(x).to(dtype)  # noqa: E731
    out = torch_ops.decode_attention(t(q), t(kp), t(vp), torch.tensor(lens),
                                     block_table=torch.tensor(table), window=c.window,
                                     softcap=c.softcap, impl=impl, **kw)
    ref, ts, kwargs = _truth(q, k, v, lens, c, t)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, _decode(*ts, torch.tensor(lens), upcast=False, **kwargs), dtype)
    assert torch.all(out[torch.tensor(lens) == 0] == 0)


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


def test_pallas_tpu_refuses_block_table():
    args = {k: jnp.asarray(v.numpy()) for k, v in _good().items()}
    with pytest.raises(ValueError, match=r"impl='pallas_tpu' does not support a paged cache"):
        arrays = [args.pop(n) for n in ARRAYS]
        jax_ops.decode_attention(*arrays, **args, impl="pallas_tpu")


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
    from aot import assert_compiled_clean, compile_in_subprocess, sweep_jobs

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
            assert r["sass_mix"] is None or r["sass_mix"]["HMMA"] > 0, f"{cid}: no tensor cores"
