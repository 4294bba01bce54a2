"""The Gluon kernels run on the CPU in ``kernels._gluon_emu``, against the float64 reference:
the FA3-style forward in its three modes and the dK/dV backward pass, over odd lengths, length
1, MQA/GQA/MHA, head dims 64-256, windows, softcaps and segment ids; and the emulator itself, which must
fail a kernel with a planted protocol or indexing bug (a test that cannot fail proves nothing).

Accuracy rule from conftest (2x the framework's same-precision error plus a floor). fp16: the
backward's dQ pass is the Triton kernel, whose interpreter gets bf16 dots wrong; the Gluon
forward alone is also checked in bf16.
"""
from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import _gluon_emu
from kernels.attention import gluon_attention, gluon_kernels, triton_attention
from kernels.attention.reference import _attention
from kernels.attention.triton_attention import TritonAttentionBlocks, attention_triton

from conftest import assert_close
from test_attention_triton import CASES, Case, _check_against_reference, _inputs

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

FWD = {"ws-128x64": TritonAttentionBlocks(128, 64, 8, 2, gluon=1),
       "overlap-128x32x3": TritonAttentionBlocks(128, 32, 8, 3, gluon=2),
       "pingpong-128x128": TritonAttentionBlocks(128, 128, 4, 2, gluon=3),
       "pingpong-128x64x3": TritonAttentionBlocks(128, 64, 4, 3, gluon=3)}
FWD_CASES = [c for c in CASES if c.head_dim in (64, 128, 256)] + [
    Case(2, 100, 257, 4, 2, 64, causal=True),
    Case(1, 70, 90, 2, 1, 256, causal=True, window=33, softcap=2.0),
]


def _forward(tensors, dtype, kwargs, blocks):
    """(kernel output, float64 output, same-precision framework output) of the forward alone."""
    bwd = triton_attention.default_blocks(tensors[0].shape[-1], dtype, backward=True, capability=None)
    with torch.no_grad():
        got = attention_triton(*(t.to(dtype) for t in tensors), blocks=(blocks, bwd), **kwargs)
        ref = _attention(*(t.to(dtype).double() for t in tensors), **kwargs)
        base = _attention(*(t.to(dtype) for t in tensors), upcast=False, **kwargs)
    return got, ref, base


# plus one 128-row tile at shift 126 (= -2 mod 32, 64 and 128: query 0 at position 126 sits next
# to a key-block edge) and shift 128 with window 2 (its window starts at key 127, the last of a
# block): an off-by-one in the full_hi or window lo bound moves a block to the wrong loop
RESIDUE_CASES = [Case(2, 8, 134, 2, 2, 64, causal=True), Case(2, 8, 136, 2, 2, 64, causal=True, window=2)]


@pytest.mark.parametrize("blocks", list(FWD.values()), ids=list(FWD))
@pytest.mark.parametrize("case", FWD_CASES + RESIDUE_CASES, ids=[c.id for c in FWD_CASES + RESIDUE_CASES])
def test_forward_matches_reference(rng, case, blocks):
    tensors, _, kwargs = _inputs(rng, case)
    before = triton_attention.LAUNCHES["_gluon_attn_fwd_kernel"]
    got, ref, base = _forward(tensors, torch.float16, kwargs, blocks)
    assert triton_attention.LAUNCHES["_gluon_attn_fwd_kernel"] == before + 1  # the Gluon kernel ran
    assert_close(got, ref, base, torch.float16, "out")


def test_forward_bf16_and_its_lse_in_the_triton_layout(rng):
    """bf16 (the models' dtype) and the log2-domain LSE [B * KVH, Sq * G] the Triton backward
    reads: row pos * G + g of kv head kvh; +inf where a query sees no key."""
    case = Case(2, 150, 120, 4, 2, 128, causal=True)
    tensors, _, kwargs = _inputs(rng, case)
    got, ref, base = _forward(tensors, torch.bfloat16, kwargs, FWD["pingpong-128x64x3"])
    assert_close(got, ref, base, torch.bfloat16, "out")
    q, k, v = (t.to(torch.float16) for t in tensors)
    _, lse = gluon_attention.gluon_fwd(q, k, v, causal=True, scale=128**-0.5, blocks=FWD["ws-128x64"])
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double().repeat_interleave(2, 2)) * 128**-0.5
    q_pos = torch.arange(150)[:, None] + 120 - 150
    s = s.masked_fill(torch.arange(120)[None, :] > q_pos, float("-inf"))
    want = (torch.logsumexp(s, -1) / np.log(2)).masked_fill(q_pos[:, 0] < 0, float("inf"))  # [b, h, q]
    want = want.reshape(2, 2, 2, 150).permute(0, 1, 3, 2).reshape(4, 300)  # [b * kvh, q * G + g]
    assert torch.equal(torch.isinf(lse), torch.isinf(want))
    fin = torch.isfinite(want)
    assert (lse.double()[fin] - want[fin]).abs().max() < 2e-3


BWD_128 = TritonAttentionBlocks(64, 128, 8, 2, dq_block_m=64, dq_block_n=64, gluon_dkdv=True)
BWD_256 = TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_block_m=64, dq_block_n=32, gluon_dkdv=True)
BWD_128_DQ = TritonAttentionBlocks(32, 128, 8, 2, gluon_dkdv=True, dq_atomic=True)  # dQ from the Gluon pass
BWD_256_DQ = TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, gluon_dkdv=True, dq_atomic=True)


@pytest.mark.parametrize("case,bwd", [
    (Case(1, 100, 257, 4, 2, 64, causal=True), BWD_128),
    (Case(1, 257, 100, 2, 2, 64, causal=True), BWD_128),
    (Case(2, 70, 90, 8, 1, 128), TritonAttentionBlocks(64, 128, 8, 2, dq_block_m=64, dq_block_n=64,
                                                       gluon_dkdv=True, dkdv_splits=2)),
    (Case(1, 1, 33, 2, 1, 128, causal=True), BWD_128),
    (Case(1, 70, 90, 2, 1, 256, causal=True), BWD_256),
    (Case(1, 64, 200, 4, 4, 256), dict(dkdv_splits=3)),
    (Case(1, 100, 257, 4, 2, 64, causal=True), BWD_128_DQ),
    (Case(2, 257, 100, 8, 1, 128, causal=True), BWD_128_DQ),
    (Case(1, 1, 33, 2, 1, 128), TritonAttentionBlocks(64, 128, 8, 2, gluon_dkdv=True, dq_atomic=True, dkdv_splits=2)),
    (Case(1, 70, 90, 2, 1, 256, causal=True), BWD_256_DQ),
    (Case(1, 300, 300, 2, 1, 64, window=7), BWD_128),
    (Case(2, 70, 90, 8, 1, 128, softcap=5.0), BWD_128_DQ),
    (Case(1, 200, 130, 2, 2, 128, causal=True, window=33, softcap=2.0), BWD_128_DQ),
    (Case(1, 150, 150, 2, 1, 256, causal=True, window=50, softcap=3.0), BWD_256_DQ),
    (Case(2, 100, 100, 4, 2, 64, causal=True, segments=True), BWD_128_DQ),
    (Case(1, 17, 100, 4, 4, 128, window=33, softcap=2.0, segments=True), BWD_128),
    (Case(2, 150, 150, 2, 1, 256, segments=True), TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, gluon_dkdv=True,
                                                                        dq_atomic=True, dkdv_splits=2)),
    # dkdv_per_head: one head's positions a program ([1, block_m, 1, D] boxes), partials summed
    (Case(1, 100, 257, 4, 2, 64, causal=True), dataclasses.replace(BWD_128_DQ, dkdv_per_head=True)),
    (Case(2, 70, 90, 8, 1, 128, softcap=5.0, segments=True), dataclasses.replace(BWD_128_DQ, dkdv_per_head=True)),
    (Case(1, 200, 130, 2, 2, 128, causal=True, window=33), dataclasses.replace(BWD_128, dkdv_per_head=True)),
    (Case(1, 70, 90, 2, 1, 256, causal=True), dataclasses.replace(BWD_256, dkdv_per_head=True)),
], ids=["gqa-causal", "sq-gt-skv", "mqa-b2-splits2", "len1", "hd256-two-passes", "hd256-mha-splits3",
        "dq-atomic-gqa-causal", "dq-atomic-mqa-b2-sq-gt-skv", "dq-atomic-len1-splits2", "dq-atomic-hd256",
        "window7", "softcap-b2", "window-softcap-sq-gt-skv", "hd256-window-softcap", "segments-b2",
        "segments-window-softcap", "hd256-segments-splits2", "per-head-dq-atomic-gqa-causal",
        "per-head-dq-atomic-mqa-b2-softcap-segments", "per-head-window-sq-gt-skv", "per-head-hd256-two-passes"])
def test_gluon_forward_and_dkdv_backward_match_reference(rng, case, bwd):
    """The whole Gluon path: the ping-pong forward, then the dK/dV pass on its LSE (dQ from the
    Triton pass, or with dq_atomic from the dK pass's atomics), against float64 for out, dq, dk
    and dv."""
    if isinstance(bwd, dict):
        bwd = TritonAttentionBlocks(32, 128, 8, 2, dkdv_passes=2, dq_block_m=64, dq_block_n=32,
                                    gluon_dkdv=True, **bwd)
    tensors, do, kwargs = _inputs(rng, case)
    before = dict(triton_attention.LAUNCHES)
    _check_against_reference(tensors, do, torch.float16, kwargs, blocks=(FWD["pingpong-128x64x3"], bwd))
    ran = lambda name: triton_attention.LAUNCHES[name] - before.get(name, 0)  # noqa: E731
    assert ran("_gluon_attn_bwd_dkdv_kernel") == bwd.dkdv_passes
    assert ran("_attn_bwd_dq_kernel") == (0 if bwd.dq_atomic else 1)


# --- the emulator fails kernels with planted bugs ------------------------------------------------

def _mutant(monkeypatch, tmp_path, old: str, new: str):
    """gluon_kernels with ``old`` replaced by ``new`` (a file: gluon.jit reads its source),
    installed where gluon_fwd finds its kernel."""
    src = open(gluon_kernels.__file__).read()
    assert src.count(old) == 1, old
    name = f"gluon_kernels_mutant_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(src.replace(old, new))
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    monkeypatch.setitem(sys.modules, name, mod)
    exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    monkeypatch.setattr(gluon_kernels, "_gluon_attn_fwd_kernel", mod._gluon_attn_fwd_kernel)


def _run_forward(mode: int):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 300, n, 64, generator=g).half() for n in (2, 1, 1))
    blocks = FWD["overlap-128x32x3"] if mode == 2 else FWD["pingpong-128x64x3"]
    o, _ = gluon_attention.gluon_fwd(q, k, v, causal=True, scale=0.125, blocks=blocks)
    return (o.double() - _attention(q.double(), k.double(), v.double(), causal=True, window=None,
                                          softcap=None, scale=0.125, q_segment_ids=None, kv_segment_ids=None)).abs().max()


@pytest.mark.parametrize("mode", [2, 3])
def test_emulator_reports_a_wrong_phase_parity_as_a_deadlock(monkeypatch, tmp_path, mode):
    _mutant(monkeypatch, tmp_path, "mbarrier.wait(kv_empty.index(slot), phase ^ 1)", "mbarrier.wait(kv_empty.index(slot), phase)")
    with pytest.raises(_gluon_emu.Deadlock, match="every live partition .* waits"):
        _run_forward(mode)


@pytest.mark.parametrize("mode", [2, 3])
def test_emulator_shows_a_buffer_released_before_its_gemm_completed(monkeypatch, tmp_path, mode):
    """V released before the wait for P V: the producer refills the slot, and the GEMM, which
    the emulator computes when the wait completes it (as late as the tensor cores may read),
    reads the next tile's V."""
    assert _run_forward(mode) < 2e-3
    wait = "                acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))\n"
    release = ("                mbarrier.arrive(kv_empty.index(NUM_STAGES + (i - 1) % NUM_STAGES), count=1)"
               "  # V_{i-1} read\n")
    _mutant(monkeypatch, tmp_path, wait + release, release + wait)
    assert _run_forward(mode) > 0.1


def test_emulator_refuses_an_accumulator_still_in_flight(monkeypatch, tmp_path):
    _mutant(monkeypatch, tmp_path, "acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))",
            "acc, p16 = warpgroup_mma_wait(num_outstanding=1, deps=(acc, p16))")
    with pytest.raises(_gluon_emu.EmulationError, match="still in flight"):
        _run_forward(3)


def test_emulator_faults_an_unmasked_store_past_the_tensor(monkeypatch, tmp_path):
    _mutant(monkeypatch, tmp_path, "lse, mask=rows < n_rows)", "lse)")
    with pytest.raises(_gluon_emu.EmulationError, match="store of LSE out of bounds"):
        _run_forward(3)


def test_emulator_catches_a_barrier_counting_one_consumer_of_two(monkeypatch, tmp_path):
    """Ping-pong's two consumers each release every slot: a count of 1 lets the producer refill
    a slot the other consumer has not read yet, and the phases drift until the ring hangs."""
    _mutant(monkeypatch, tmp_path, "mbarrier.init(kv_empty.index(i), count=CONSUMERS)",
            "mbarrier.init(kv_empty.index(i), count=1)")
    with pytest.raises(_gluon_emu.Deadlock, match="every live partition"):
        _run_forward(3)


def test_emulator_names_an_operation_it_does_not_cover():
    with pytest.raises(_gluon_emu.EmulationError, match=r"gl\(emulated\).inline_asm_elementwise is not emulated"):
        _gluon_emu.GL.inline_asm_elementwise
    assert not hasattr(_gluon_emu.GL, "inline_asm_elementwise")


def test_emulator_keeps_triton_integer_semantics():
    """int32 wraps, // truncates and % takes the dividend's sign (C, as the GPU), and a 0-d
    int64 next to an int32 block promotes it (where torch would keep int32)."""
    T = _gluon_emu.T
    a = T(torch.tensor(-7, dtype=torch.int32))
    assert int(a // 2) == -3 and int(a % 2) == -1
    assert int(T(torch.tensor(2**31 - 1, dtype=torch.int32)) + 1) == -2**31
    block = T(torch.arange(3, dtype=torch.int32))
    assert (T(torch.tensor(2**40)) + block).v.dtype == torch.int64
    assert (block * 0.5).v.dtype == torch.float32 and (block + 1).v.dtype == torch.int32


# --- property-based: random problems and Gluon blocks (hypothesis, a small budget) ---------------

@st.composite
def _gluon_problems(draw):
    d = draw(st.sampled_from([64, 128, 256]))
    kvh, g = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 4, 8]))
    sq, skv = draw(st.integers(1, 200)), draw(st.integers(1, 200))
    case = Case(draw(st.sampled_from([1, 2])), sq, skv, kvh * g, kvh, d, causal=draw(st.booleans()),
                window=draw(st.one_of(st.none(), st.integers(1, 150))),
                softcap=draw(st.one_of(st.none(), st.sampled_from([2.0, 30.0]))),
                segments=sq == skv and draw(st.booleans()))
    mode = draw(st.sampled_from([1, 2, 3]))
    fwd = TritonAttentionBlocks(128, draw(st.sampled_from([32, 64] if d == 256 else [32, 64, 128])),
                                4 if mode == 3 else 8, draw(st.sampled_from([2, 3])), gluon=mode)
    atomic = draw(st.booleans())
    bwd = TritonAttentionBlocks(32 if d == 256 else draw(st.sampled_from([32, 64])), 128, 8, 2, gluon_dkdv=True,
                                dq_atomic=atomic, dq_block_m=0 if atomic else 64, dq_block_n=0 if atomic else 32,
                                dkdv_passes=2 if d == 256 else draw(st.sampled_from([1, 2])),
                                dkdv_splits=draw(st.sampled_from([0, 1, 3])))
    return case, fwd, bwd, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gluon_problems())
def test_gluon_forward_and_backward_on_random_problems(p):
    """Any length, group size, head dim, mask and softcap, with any Gluon forward mode and dK/dV
    configuration: out, dq, dk and dv within the accuracy rule of float64."""
    case, fwd, bwd, seed = p
    tensors, do, kwargs = _inputs(np.random.default_rng(seed), case)
    _check_against_reference(tensors, do, torch.float16, kwargs, blocks=(fwd, bwd))


@pytest.mark.parametrize("case", [Case(1, 70, 70, 4, 1, 128, causal=True), Case(2, 33, 33, 4, 2, 256)],
                         ids=["mqa-causal-hd128", "gqa-b2-hd256"])
def test_sm90_defaults_run_the_gluon_kernels(rng, monkeypatch, case):
    """With no blocks on an sm_90 device (the capability stood in for; the kernels emulated on
    CPU tensors), attention_triton picks the Gluon forward and the backward of SM90_DEFAULTS
    (dQ by atomics: the Gluon dK/dV pass at head_dim 128, the Triton one in two passes at 256)
    and matches float64; with a softcap it keeps the Triton kernels."""
    monkeypatch.setattr(triton_attention, "_capability", lambda t: (9, 0))
    tensors, do, kwargs = _inputs(rng, case)
    before = dict(triton_attention.LAUNCHES)
    _check_against_reference(tensors, do, torch.float16, kwargs, blocks=None)
    ran = lambda name: triton_attention.LAUNCHES[name] - before.get(name, 0)  # noqa: E731
    bwd = triton_attention.SM90_DEFAULTS[case.head_dim][1]
    dkdv = "_gluon_attn_bwd_dkdv_kernel" if bwd.gluon_dkdv else "_attn_bwd_dkdv_kernel"
    assert bwd.gluon_dkdv == (case.head_dim == 128) and bwd.dq_atomic
    assert (ran("_gluon_attn_fwd_kernel"), ran(dkdv), ran("_attn_bwd_dq_kernel")) == (1, bwd.dkdv_passes, 0)
    before = dict(triton_attention.LAUNCHES)
    q, k, v = (t.to(torch.float16) for t in tensors)
    attention_triton(q, k, v, causal=True, softcap=5.0)
    assert ran("_attn_fwd_kernel") == 1 and ran("_gluon_attn_fwd_kernel") == 0
