"""Split-KV decode attention (kernels/decode/) against the float64 reference.

Every impl (Triton, SDPA, reference; Pallas, XLA, jnp reference) on fresh random data with
per-row lengths including 0, 1 and max_len, lengths off the block grid, MQA/GQA/MHA, windows,
softcap and head dims 64/80/128. Accuracy rule from conftest: error vs float64 on the rounded
inputs <= 2x the error of the framework doing the same math in the same precision + a floor.
Triton runs in fp32/fp16 (the interpreter's bf16 tl.dot is wrong), Pallas in fp32/fp16/bf16.
Also: the split/combine path with > 1 split, bad input, AOT compiles for sm_90 and sm_80, and
the split kernel's K/V offsets read from its sm_90 PTX (64-bit products only; a 32-bit control
kernel shows the reading can fail).
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

from conftest import assert_close


@dataclasses.dataclass(frozen=True)
class Case:
    heads: int
    kv_heads: int
    head_dim: int
    max_len: int
    lengths: tuple
    window: int | None = None
    softcap: float | None = None

    @property
    def id(self) -> str:
        kind = "mqa" if self.kv_heads == 1 else "mha" if self.kv_heads == self.heads else "gqa"
        parts = [f"{kind}{self.heads}x{self.kv_heads}", f"d{self.head_dim}", f"T{self.max_len}",
                 "L" + "-".join(map(str, self.lengths))]
        parts += [f"win{self.window}"] if self.window else []
        parts += [f"cap{self.softcap:g}"] if self.softcap else []
        return "_".join(parts)


CASES = [
    Case(4, 1, 64, 100, (0, 1, 100)),  # MQA; empty row, one token, full cache
    Case(8, 2, 80, 77, (5, 77, 33, 16), window=20),  # GQA, odd head_dim, window
    Case(4, 2, 128, 130, (130, 65), softcap=5.0),
    Case(2, 2, 64, 48, (47, 1), window=30, softcap=2.0),  # MHA; window wider than a row
]


def _inputs(rng, c: Case):
    b = len(c.lengths)
    q = rng.standard_normal((b, c.heads, c.head_dim))
    k = rng.standard_normal((b, c.max_len, c.kv_heads, c.head_dim))
    v = rng.standard_normal((b, c.max_len, c.kv_heads, c.head_dim))
    return q, k, v, np.asarray(c.lengths, dtype=np.int64)


def _torch_check(out, q, k, v, lens, c: Case, dtype, device="cpu"):
    """out vs the float64 reference (CPU) on dtype-rounded inputs; baseline: torch in dtype on device."""
    ts = [torch.tensor(x).to(dtype) for x in (q, k, v)]
    L = torch.tensor(lens)
    kw = dict(window=c.window, softcap=c.softcap, scale=c.head_dim**-0.5)
    ref = _decode(*(t.double() for t in ts), L, **kw)
    base = _decode(*(t.to(device) for t in ts), L.to(device), upcast=False, **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref, base, dtype)
    zero_rows = torch.tensor(lens) == 0
    assert torch.all(out.cpu()[zero_rows] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_triton_matches_reference(rng, case, dtype):
    q, k, v, lens = _inputs(rng, case)
    ts = [torch.tensor(x).to(dtype) for x in (q, k, v)]
    before = triton_decode.LAUNCHES["_decode_combine_kernel"]
    out = torch_ops.decode_attention(*ts, torch.tensor(lens), window=case.window,
                                     softcap=case.softcap, impl="triton")
    assert triton_decode.LAUNCHES["_decode_combine_kernel"] == before + 1
    _torch_check(out, q, k, v, lens, case, dtype)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("case", [c for c in CASES if c.softcap is None], ids=lambda c: c.id)
def test_torch_peers_match_reference(rng, case, impl):
    q, k, v, lens = _inputs(rng, case)
    ts = [torch.tensor(x).float() for x in (q, k, v)]
    out = torch_ops.decode_attention(*ts, torch.tensor(lens), window=case.window, impl=impl)
    _torch_check(out, q, k, v, lens, case, torch.float32)


def test_sdpa_rejects_softcap(rng):
    q, k, v, lens = _inputs(rng, CASES[0])
    with pytest.raises(ValueError, match="softcap"):
        torch_ops.decode_attention(*(torch.tensor(x) .float() for x in (q, k, v)), torch.tensor(lens),
                                   softcap=3.0, impl="sdpa")


def test_triton_split_combine_runs_several_splits(rng):
    """The default split count here is > 1 and each long row spreads over several shares."""
    c = Case(4, 1, 64, 200, (200, 3))
    q, k, v, lens = _inputs(rng, c)
    ts = [torch.tensor(x).float() for x in (q, k, v)]
    blocks = triton_decode.default_blocks(64, torch.float32, 200, capability=None)
    splits = triton_decode.num_kv_splits(2, 1, 200, blocks.block_n, None)
    assert splits > 1
    o, _, lse = triton_decode._decode_fwd(*ts, torch.tensor(lens), window=None, softcap=None,
                                          scale=0.125, blocks=blocks, num_splits=splits)
    shares = torch.isfinite(lse[:, 0]).sum(-1).tolist()  # non-empty shares per row
    assert shares == [splits, 1], shares
    _torch_check(o, q, k, v, lens, c, torch.float32)


def test_triton_uneven_splits(rng):
    """More splits than blocks for short rows, an empty row, 7 (not a power of two) splits."""
    c = Case(4, 1, 64, 200, (200, 0, 150, 3))
    q, k, v, lens = _inputs(rng, c)
    ts = [torch.tensor(x).float() for x in (q, k, v)]
    o = triton_decode.decode_triton(*ts, torch.tensor(lens), scale=0.125, num_splits=7,
                                    blocks=triton_decode.TritonDecodeBlocks(16, 4, 1))
    _torch_check(o, q, k, v, lens, c, torch.float32)


def test_triton_combine_splits_head_dim_across_programs(rng):
    """150 splits: the combine takes 32 of head_dim 80's columns a program (3 programs a head,
    the last one masked), all 150 shares at once; short rows leave most shares empty."""
    c = Case(4, 2, 80, 200, (200, 0, 37))
    q, k, v, lens = _inputs(rng, c)
    ts = [torch.tensor(x).float() for x in (q, k, v)]
    assert triton_decode.combine_columns(128, 256) == 32
    o = triton_decode.decode_triton(*ts, torch.tensor(lens), scale=80**-0.5, num_splits=150,
                                    blocks=triton_decode.TritonDecodeBlocks(16, 4, 1))
    _torch_check(o, q, k, v, lens, c, torch.float32)


def test_pdl_blocks_run_in_order_here_and_are_refused_before_sm90(rng, monkeypatch):
    """pdl=True (programmatic dependent launch, an sm_90 candidate): the interpreter runs the
    two launches in order, with the same result as plain launches; a compiled pre-sm_90 device
    is refused naming blocks.pdl, before any launch; sm_90 takes it (the waits are checked in
    the AOT test below, and on a GPU by tests/test_kernels_gpu.py's decode candidates)."""
    c = Case(4, 1, 64, 200, (200, 3))
    q, k, v, lens = _inputs(rng, c)
    ts = [torch.tensor(x).float() for x in (q, k, v)]
    blk = triton_decode.TritonDecodeBlocks(16, 4, 1)
    plain = triton_decode.decode_triton(*ts, torch.tensor(lens), num_splits=3, blocks=blk)
    before = dict(triton_decode.LAUNCHES)
    pdl = triton_decode.decode_triton(*ts, torch.tensor(lens), num_splits=3,
                                      blocks=dataclasses.replace(blk, pdl=True))
    assert torch.equal(pdl, plain)
    assert triton_decode.LAUNCHES["_decode_combine_kernel"] == before["_decode_combine_kernel"] + 1
    monkeypatch.setattr(triton_decode, "_capability", lambda t: (8, 0))
    with pytest.raises(ValueError, match=r"blocks.pdl: programmatic dependent launch needs sm_90 or newer, got sm_80"):
        triton_decode.decode_triton(*ts, torch.tensor(lens), num_splits=3, blocks=dataclasses.replace(blk, pdl=True))
    assert triton_decode.LAUNCHES["_decode_combine_kernel"] == before["_decode_combine_kernel"] + 1  # nothing ran
    monkeypatch.setattr(triton_decode, "_capability", lambda t: (9, 0))
    assert triton_decode._use_pdl(dataclasses.replace(blk, pdl=True), ts[0])
    assert not triton_decode._use_pdl(blk, ts[0])
    assert [b.pdl for b in triton_decode.candidate_blocks(128, torch.bfloat16, 32768)].count(True) == 1
    assert not any(b.pdl for b in triton_decode.candidate_blocks(128, torch.bfloat16, 32768, capability=(8, 0)))
    with pytest.raises(ValueError, match="pdl=1 must be a bool"):
        triton_decode.TritonDecodeBlocks(16, 4, 1, pdl=1)


def test_triton_non_contiguous_cache(rng):
    """Caches viewed out of a wider pool (kv heads interleaved, strided head_dim)."""
    b, t, kvh, d = 2, 70, 2, 64
    pool = torch.from_numpy(rng.standard_normal((2, b, t, 2 * kvh, 2 * d))).float()
    k, v = pool[0, :, :, ::2, ::2], pool[1, :, :, 1::2, 1::2]
    q = torch.from_numpy(rng.standard_normal((b, 2 * d, 4))).float()[:, ::2].transpose(1, 2)
    assert not any(x.is_contiguous() for x in (q, k, v))
    lens = torch.tensor([70, 41])
    out = torch_ops.decode_attention(q, k, v, lens, impl="triton")
    ref = _decode(q.double(), k.double(), v.double(), lens, window=None, softcap=None, scale=d**-0.5)
    assert_close(out, ref, _decode(q, k, v, lens, window=None, softcap=None, scale=d**-0.5,
                                   upcast=False), torch.float32)


def test_gpu_split_policy_fills_the_gpu():
    """At batch 1 a long cache is split until ~2 waves of programs cover 132 SMs."""
    for kvh in (1, 8):
        s = triton_decode.num_kv_splits(1, kvh, 32768, 64, 132)
        assert kvh * s >= 132 and s <= triton_decode.MAX_SPLITS
        p = pallas_decode.num_kv_splits(1, kvh, 32768, 64, 132)
        assert kvh * p >= 132 and p & (p - 1) == 0
    assert triton_decode.num_kv_splits(64, 8, 32768, 64, 132) == 1  # big batch: no split
    assert triton_decode.num_kv_splits(1, 1, 100, 64, 132) == 1  # < 2 blocks per split: no split
    # batch 16 (MQA) and 16 x 2 (GQA) at 32k: one wave of the 264 slots, not a few programs over
    assert triton_decode.num_kv_splits(16, 1, 32768, 64, 132) == 16
    assert triton_decode.num_kv_splits(16, 2, 32768, 64, 132) == 8


# ---- JAX ------------------------------------------------------------------------------

J32, J16, JB16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)


def _jax_check(out, q, k, v, lens, c: Case, dtype):
    """out vs the torch float64 reference on dtype-rounded inputs; baseline: jnp in dtype."""
    js = [jnp.asarray(x, dtype) for x in (q, k, v)]
    kw = dict(window=c.window, softcap=c.softcap, scale=c.head_dim**-0.5)
    ref = _decode(*(torch.from_numpy(np.asarray(x, np.float64)) for x in js), torch.tensor(lens), **kw)
    base = _decode_jax(*js, jnp.asarray(lens), upcast=False, **kw)
    assert out.dtype == dtype and out.shape == tuple(ref.shape)
    assert_close(out, ref, base, dtype.name)
    assert np.all(np.asarray(out, np.float32)[lens == 0] == 0)


# Every case in fp32 or a 16-bit dtype, every dtype in some case (interpret mode is slow).
PALLAS = [(CASES[0], J32), (CASES[0], JB16), (CASES[1], J16), (CASES[2], JB16), (CASES[3], J32)]


@pytest.mark.parametrize("case,dtype", PALLAS, ids=[f"{c.id}-{d.name}" for c, d in PALLAS])
def test_pallas_matches_reference(rng, case, dtype):
    q, k, v, lens = _inputs(rng, case)
    out = jax_ops.decode_attention(*(jnp.asarray(x, dtype) for x in (q, k, v)), jnp.asarray(lens),
                                   window=case.window, softcap=case.softcap, impl="pallas")
    _jax_check(out, q, k, v, lens, case, dtype)


@pytest.mark.parametrize("impl", ["xla", "reference"])
@pytest.mark.parametrize("case", [c for c in CASES if c.softcap is None], ids=lambda c: c.id)
def test_jax_peers_match_reference(rng, case, impl):
    q, k, v, lens = _inputs(rng, case)
    out = jax_ops.decode_attention(*(jnp.asarray(x, J32) for x in (q, k, v)), jnp.asarray(lens),
                                   window=case.window, impl=impl)
    _jax_check(out, q, k, v, lens, case, J32)


def test_pallas_split_combine_under_jit(rng):
    """jit with traced lengths (value check skipped, kernel clamps) and several splits."""
    c = Case(8, 2, 64, 192, (192, 0, 100))
    q, k, v, lens = _inputs(rng, c)
    js = [jnp.asarray(x, J32) for x in (q, k, v)]
    fn = jax.jit(lambda q, k, v, L: jax_ops.decode_attention(q, k, v, L, impl="pallas"))
    _jax_check(fn(*js, jnp.asarray(lens)), q, k, v, lens, c, J32)
    o, _, lse = pallas_decode.decode_pallas(*js, jnp.asarray(lens), window=None, softcap=None,
                                            scale=0.125, num_splits=4, return_partials=True)
    shares = np.isfinite(np.asarray(lse)[:, 0, :, 0]).sum(-1).tolist()
    assert shares[0] > 1 and shares[1] == 0 and shares[2] > 1, shares
    _jax_check(o, q, k, v, lens, c, J32)


def test_pallas_lowers_to_triton_for_cuda():
    """The compiled path lowers both kernels to Triton for CUDA (export; no GPU needed)."""
    import re

    from jax import export

    q = jnp.zeros((2, 8, 80), JB16)
    k = jnp.zeros((2, 256, 2, 80), JB16)

    def f(q, k, v, L):
        return pallas_decode.decode_pallas(q, k, v, L, window=100, softcap=5.0, scale=0.1,
                                           interpret=False, num_splits=4)

    call = "__gpu$xla.gpu.triton"
    exported = export.export(jax.jit(f), platforms=("cuda",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(call)])(
        q, k, k, jnp.array([3, 200], jnp.int32))
    targets = re.findall(r"custom_call @(\S+)\(", exported.mlir_module())
    assert [t for t in targets if "triton" in t] == [call] * 2, targets


# ---- bad input -------------------------------------------------------------------------

def _good_torch():
    return dict(q=torch.zeros(2, 4, 16), k_cache=torch.zeros(2, 32, 2, 16),
                v_cache=torch.zeros(2, 32, 2, 16), cache_seqlens=torch.tensor([3, 32]))


BAD = [
    ("q_2d", dict(q=torch.zeros(2, 64)), ValueError, r"q must be 3-D"),
    ("k_3d", dict(k_cache=torch.zeros(2, 32, 16)), ValueError, r"k_cache must be 4-D"),
    ("kv_shape", dict(v_cache=torch.zeros(2, 33, 2, 16)), ValueError, r"k_cache and v_cache must have the same shape"),
    ("batch", dict(k_cache=torch.zeros(3, 32, 2, 16), v_cache=torch.zeros(3, 32, 2, 16)), ValueError,
     r"k_cache batch must equal q batch 2, got 3"),
    ("head_dim", dict(k_cache=torch.zeros(2, 32, 2, 8), v_cache=torch.zeros(2, 32, 2, 8)), ValueError,
     r"k_cache head_dim must equal q head_dim 16, got 8"),
    ("groups", dict(k_cache=torch.zeros(2, 32, 3, 16), v_cache=torch.zeros(2, 32, 3, 16)), ValueError,
     r"heads % kv_heads must be 0 \(q heads 4, cache kv_heads 3\)"),
    ("too_long", dict(cache_seqlens=torch.tensor([3, 33])), ValueError, r"cache_seqlens must be <= max_len 32"),
    ("negative", dict(cache_seqlens=torch.tensor([-1, 3])), ValueError, r"cache_seqlens must be >= 0"),
    ("float_lens", dict(cache_seqlens=torch.tensor([1.0, 3.0])), TypeError, r"cache_seqlens must be an integer"),
    ("lens_shape", dict(cache_seqlens=torch.tensor([[1, 3]])), ValueError, r"cache_seqlens must have shape \(2,\)"),
    ("lens_batch", dict(cache_seqlens=torch.tensor([1, 2, 3])), ValueError, r"cache_seqlens must have shape \(2,\)"),
    ("mixed_dtype", dict(k_cache=torch.zeros(2, 32, 2, 16, dtype=torch.float16)), TypeError,
     r"k_cache dtype must equal q dtype torch.float32, got torch.float16"),
    ("q_dtype", dict(q=torch.zeros(2, 4, 16, dtype=torch.float64)), TypeError, r"q dtype must be one of"),
    ("window0", dict(window=0), ValueError, r"window must be >= 1, got 0"),
    ("window_float", dict(window=2.5), TypeError, r"window must be an int"),
    ("softcap", dict(softcap=-1.0), ValueError, r"softcap must be a finite float > 0 or None, got -1.0"),
    ("softcap_inf", dict(softcap=float("inf")), ValueError, r"softcap must be a finite float > 0 or None, got inf"),
    ("scale_inf", dict(scale=float("inf")), ValueError, r"scale must be a finite float > 0 or None, got inf"),
    ("scale_zero", dict(scale=0.0), ValueError, r"scale must be a finite float > 0 or None, got 0.0"),
    ("impl", dict(impl="cuda"), ValueError, r"impl must be one of"),
]


@pytest.mark.parametrize("change,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_torch_bad_input(change, exc, match):
    args = {**_good_torch(), **change}
    before = sum(triton_decode.LAUNCHES.values())
    with pytest.raises(exc, match=match):
        torch_ops.decode_attention(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"),
                                   args.pop("cache_seqlens"), **args)
    assert sum(triton_decode.LAUNCHES.values()) == before  # nothing launched


JAX_BAD = ("groups", "too_long", "negative", "float_lens", "mixed_dtype", "softcap_inf", "scale_inf")


@pytest.mark.parametrize("change,exc,match", [b[1:] for b in BAD if b[0] in JAX_BAD],
                         ids=[b[0] for b in BAD if b[0] in JAX_BAD])
def test_jax_bad_input(change, exc, match):
    args = {k: jnp.asarray(v.numpy()) if isinstance(v, torch.Tensor) else v
            for k, v in {**_good_torch(), **change}.items()}
    with pytest.raises(exc, match=match.replace("torch.", "")):
        jax_ops.decode_attention(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"),
                                 args.pop("cache_seqlens"), impl="pallas", **args)


def test_blocks_and_splits_validated():
    for kwargs in (dict(block_n=48), dict(block_n=8), dict(num_warps=3), dict(num_stages=0)):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            triton_decode.TritonDecodeBlocks(**kwargs)
    with pytest.raises(ValueError, match="block_k"):
        pallas_decode.PallasDecodeBlocks(block_k=24)
    args = _good_torch()
    with pytest.raises(ValueError, match="num_splits"):
        triton_decode.decode_triton(*args.values(), num_splits=0)
    with pytest.raises(ValueError, match="num_splits must be a power of two"):
        pallas_decode.decode_pallas(*(jnp.asarray(t.numpy()) for t in args.values()), window=None,
                                    softcap=None, scale=0.25, num_splits=3)


def test_reference_validates_like_the_api():
    args = _good_torch()
    args["cache_seqlens"] = torch.tensor([3, 40])
    with pytest.raises(ValueError, match="max_len 32"):
        decode_reference(*args.values())


# ---- ahead-of-time compile for sm_90 and sm_80 (no GPU; a fresh process: tests/aot.py) -------

AOT = {"d128-fp16-g8": (128, "float16", None, None, 8), "d128-bf16-mqa": (128, "bfloat16", None, None, 1),
       "d80-bf16-win-cap-g4": (80, "bfloat16", 4096, 30.0, 4), "d256-fp16-g8": (256, "float16", None, None, 8),
       "d64-fp32-mqa": (64, "float32", None, None, 1)}


# Spill audit entries (benchmarks.compile_report --sweep): the fp32 split kernel spilled
# 528 B on sm_90 at head_dim 128 with 4 warps (the 64-only test above missed it).
AOT_SWEEP = [(f"decode hd{d} fp32", cap, ["_decode_split_kernel"]) for d in (80, 128, 256) for cap in (80, 90)]
AOT_SWEEP += [("decode hd96 bf16", 80, None), ("decode hd256 bf16", 80, ["_decode_split_kernel"])]


def test_triton_decode_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    """Split and combine kernels, default sm_90 configs: compile, no register spills, and the
    16-bit split kernel on tensor cores (mma.sync: 16-row tiles are too small for wgmma);
    then spill audit entries (fp32 on sm_80/90, 16-bit on sm_80) in the same compile process."""
    from aot import assert_compiled_clean, compile_in_subprocess, sweep_jobs

    from benchmarks.compile_report import blocks_json

    jobs = {cid: {"module": "kernels.decode.triton_decode", "args": [d, f"torch.{dt}"],
                  "kwargs": {"window": w, "softcap": c, "group": g}, "cap": 90}
            for cid, (d, dt, w, c, g) in AOT.items()}
    pdl = triton_decode.TritonDecodeBlocks(64, 4, 3, pdl=True)  # the sm_90 PDL candidate
    pdl_job = {"module": "kernels.decode.triton_decode", "args": [128, "torch.bfloat16"],
               "kwargs": {"group": 16, "blocks": blocks_json(pdl)}, "cap": 90}
    sweep = sweep_jobs(AOT_SWEEP)
    report = compile_in_subprocess({**jobs, **sweep, "pdl-d128-bf16-mqa": pdl_job}, tmp_path)
    for name, r in report.pop("pdl-d128-bf16-mqa").items():  # both kernels wait before their loads
        assert_compiled_clean(r, f"pdl {name}")
        assert r["pdl_wait_in_ptx"], f"pdl {name}: no griddepcontrol.wait in the PTX"
    assert not any(r.get("pdl_wait_in_ptx") for ks in report.values() for r in ks.values() if isinstance(r, dict))
    for job in sweep:
        kernels = report.pop(job)
        assert "error" not in kernels, (job, kernels.get("error"))
        for name, r in kernels.items():
            assert_compiled_clean(r, f"{job} {name}", cap=sweep[job]["cap"])
    for cid, kernels in report.items():
        assert "error" not in kernels, (cid, kernels.get("error"))
        assert set(kernels) == {"_decode_split_kernel", "_decode_combine_kernel"}, (cid, sorted(kernels))
        for name, r in kernels.items():
            assert_compiled_clean(r, f"{cid} {name}")
        if "fp32" not in cid:
            assert kernels["_decode_split_kernel"]["sass_mix"]["HMMA"] > 0, f"{cid}: no tensor cores"


def test_check_lengths_false_skips_only_the_host_read(monkeypatch):
    """check_lengths=False (a model's later layers in one step): no device-to-host copy of the
    lengths, the same result, and shapes, dtypes and devices still checked."""
    args = _good_torch()
    args["q"] = torch.randn(2, 4, 16)
    args["k_cache"], args["v_cache"] = torch.randn(2, 32, 2, 16), torch.randn(2, 32, 2, 16)
    checked = torch_ops.decode_attention(**args, impl="reference")

    def no_host_copy(self, *a, **k):
        raise AssertionError("cache_seqlens was read back to the host")

    monkeypatch.setattr(torch.Tensor, "cpu", no_host_copy)
    unchecked = torch_ops.decode_attention(**args, impl="reference", check_lengths=False)
    torch.testing.assert_close(unchecked, checked, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"cache_seqlens must have shape \(2,\)"):
        torch_ops.decode_attention(**{**args, "cache_seqlens": torch.tensor([1, 2, 3])},
                                   impl="reference", check_lengths=False)


# ---- 64-bit cache offsets in the compiled split kernel (sm_90 PTX) -------------------------

_KV_STRIDES = ("stride_kb", "stride_ks", "stride_kh", "stride_vb", "stride_vs", "stride_vh")


def _stride_uses(ptx: str, kernel: str, params: list, name: str) -> list:
    """The opcodes of the PTX instructions that read stride argument ``name`` (the register its
    ld.param fills, as a source operand)."""
    import re

    m = re.search(rf"ld\.param\.[bsu](?:32|64)\s+(%\w+),\s*\[{kernel}_param_{params.index(name)}\]", ptx)
    assert m, f"{kernel}: no ld.param of {name}"
    reg, uses = m.group(1), []
    for line in ptx.splitlines():
        op, _, operands = line.strip().rstrip(";").partition(" ")
        if reg in [o.strip() for o in operands.split(",")][1:]:  # a source, not the destination
            uses.append(op)
    return uses


def _is_64bit(op: str) -> bool:
    """A 64-bit product or extension: mul/mad.wide (32x32 -> 64), *.s64 / *.u64, cvt to 64."""
    return (op.startswith(("mul.wide.", "mad.wide.", "cvt.s64.", "cvt.u64."))
            or op.endswith((".s64", ".u64")))


def test_split_kernel_cache_offsets_are_64bit(tmp_path):
    """Compiled for sm_90 (bf16, head_dim 128, a 128k cache, contiguous and paged), every K/V
    stride enters the address math only through 64-bit products (``mul.wide.s32``,
    ``mul.lo.s64``), never a 32-bit ``mul.lo.s32``: a 128k-position row of 8 kv heads x 128
    dims is 2^27 elements, and batch or page offsets pass 2^31. The same reading flags a
    control kernel whose offset is an int32 product."""
    import json
    import os
    import subprocess
    import sys

    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        ptxas = nvidia.get_ptxas(90).path
    except RuntimeError as e:
        pytest.skip(f"ptxas not available: {e}")
    if not ptxas or not os.path.exists(ptxas):
        pytest.skip(f"ptxas not available at {ptxas!r}")
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "ptx.json"
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(here), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, os.path.join(here, "_decode_ptx_worker.py"), str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads(out.read_text())
    for variant in ("contiguous", "paged"):
        ptx, params = data[variant]["ptx"], data[variant]["params"]
        for name in _KV_STRIDES:
            uses = _stride_uses(ptx, "_decode_split_kernel", params, name)
            assert uses, f"{variant}: {name} is loaded but never used"
            assert all(_is_64bit(op) for op in uses), f"{variant}: {name} in 32-bit math: {uses}"
    control = _stride_uses(data["control32"]["ptx"], "_offset32_control", data["control32"]["params"],
                           "stride_ks")
    assert control and not all(_is_64bit(op) for op in control), control
