"""The Gluon kernels' launchers: what they accept and what they refuse, by name, before any
launch, and the scalars they hand the kernels. Their numbers against float64 are checked on the
CPU through the emulator in ``test_gluon_emulator.py`` and on a GPU in ``test_attention_gpu.py``;
their compiles in ``test_triton_aot.py`` (sm_90, no spills, 12 warps)."""
from __future__ import annotations

import pytest
import torch

from kernels.attention import gluon_attention, triton_attention
from kernels.attention.triton_attention import TritonAttentionBlocks, attention_triton, candidate_blocks

PINGPONG = TritonAttentionBlocks(128, 128, 4, 2, gluon=3)


def _qkv(b=1, sq=40, skv=40, h=8, kvh=1, d=128, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, sq, h, d, generator=g).to(dtype)
    k, v = (torch.randn(b, skv, kvh, d, generator=g).to(dtype) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_m=128, block_n=128, num_warps=4, num_stages=2, gluon=4), "gluon=4 must be 0"),
    (dict(block_m=64, block_n=128, num_warps=4, num_stages=2, gluon=3), "block_m=128"),
    (dict(block_m=128, block_n=128, num_warps=8, num_stages=2, gluon=3), "num_warps=4"),
    (dict(block_m=128, block_n=128, num_warps=4, num_stages=2, gluon=1), "num_warps=8"),
    (dict(block_m=128, block_n=16, num_warps=8, num_stages=2, gluon=2), "block_n 32, 64 or 128"),
    (dict(block_m=128, block_n=128, num_warps=8, num_stages=2, tma=True, gluon=1), "tma=False"),
    (dict(block_m=128, block_n=128, num_warps=8, num_stages=1, gluon=1), "num_stages >= 2"),
])
def test_blocks_refuse_what_the_gluon_kernel_cannot_take(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TritonAttentionBlocks(**kwargs)


def test_blocks_round_trip_through_the_custom_ops_list():
    assert TritonAttentionBlocks.from_list(PINGPONG.as_list()) == PINGPONG


def test_gluon_blocks_are_forward_only_and_run_on_sm90_or_emulated_on_the_cpu():
    q, k, v = _qkv()
    before = sum(triton_attention.LAUNCHES.values())
    with pytest.raises(ValueError, match="forward-only"):
        attention_triton(q, k, v, causal=True, blocks=PINGPONG)
    assert sum(triton_attention.LAUNCHES.values()) == before  # refused before any launch
    flags = dict(causal=True, window=None, softcap=None, segments=False)
    assert gluon_attention.gluon_problem(q, k, v, PINGPONG, **flags) is None  # CPU: kernels._gluon_emu
    meta = [t.to("meta") for t in (q, k, v)]
    assert "sm_90 GPU, or emulated on CPU tensors; got a tensor on meta" in \
        gluon_attention.gluon_problem(*meta, PINGPONG, **flags)


@pytest.mark.parametrize("change,match", [
    (dict(capability=(8, 0)), "needs sm_90"),
    (dict(capability=(10, 0)), "needs sm_90"),
    (dict(dtype=torch.float32), "float16 or bfloat16"),
    (dict(d=80), "head_dim 64, 128 or 256"),
    (dict(d=96), "head_dim 64, 128 or 256"),
    (dict(h=12, kvh=4), "group size 3 must be a power of two"),
    (dict(h=256, kvh=1), "group size 256 must be a power of two dividing block_m=128"),
    (dict(h=128, kvh=1), "group size 128 must divide 64"),
])
def test_gluon_problem_names_what_it_cannot_run(change, match):
    shape = {k: change[k] for k in ("h", "kvh", "d", "dtype") if k in change}
    q, k, v = _qkv(**shape)
    flags = dict(causal=True, window=change.get("window"), softcap=change.get("softcap"),
                 segments=change.get("segments", False), capability=change.get("capability", (9, 0)))
    assert gluon_attention.gluon_problem(q, k, v, PINGPONG, **flags) is not None
    assert match in gluon_attention.gluon_problem(q, k, v, PINGPONG, **flags)


@pytest.mark.parametrize("h,kvh,d,dtype", [(8, 1, 128, torch.bfloat16), (8, 2, 64, torch.float16),
                                           (4, 4, 128, torch.float16), (8, 1, 256, torch.bfloat16)])
def test_gluon_problem_accepts_mqa_gqa_mha_head_dims_64_to_256_window_softcap(h, kvh, d, dtype):
    q, k, v = _qkv(h=h, kvh=kvh, d=d, dtype=dtype)
    for causal, window, softcap, seg in ((True, None, None, False), (False, None, None, True), (True, 64, 50.0, True),
                                         (False, 7, None, False)):
        assert gluon_attention.gluon_problem(q, k, v, PINGPONG, causal=causal, window=window, softcap=softcap,
                                             segments=seg, capability=(9, 0)) is None


def test_candidates_offer_the_gluon_modes_on_sm90_only():
    modes = lambda *a, **kw: sorted({b.gluon for b in candidate_blocks(*a, **kw)} - {0})  # noqa: E731
    for d in (64, 128):
        assert modes(d, torch.bfloat16, capability=(9, 0)) == [1, 2, 3]
    assert modes(256, torch.bfloat16, capability=(9, 0)) == [1, 3]
    for d in (64, 128, 256):
        assert candidate_blocks(d, torch.bfloat16, capability=(9, 0))[0].gluon == 0  # the default first
    assert modes(80, torch.bfloat16, capability=(9, 0)) == []
    assert modes(128, torch.float32, capability=(9, 0)) == []
    assert modes(128, torch.bfloat16, capability=(8, 0)) == []
    assert modes(128, torch.bfloat16, backward=True, capability=(9, 0)) == []


def test_kernel_scalars_fold_the_scale_softcap_and_window():
    """qk_scale is scale * log2 e without a softcap and 1 with one (the softcap's tanh then
    takes scale / c and gives c * log2 e units); a window wider than any distance is clamped."""
    from kernels.attention.gluon_attention import LOG2E, _scalars

    assert _scalars(10, 20, 0.125, None, None) == (0.125 * LOG2E, 0, 1.0, 1.0)
    assert _scalars(10, 20, 0.125, 5, 50.0) == (1.0, 5, 0.125 / 50.0, 50.0 * LOG2E)
    assert _scalars(10, 20, 0.125, 10**9, None)[1] == 30


GLUON_BWD = TritonAttentionBlocks(64, 128, 8, 2, dq_block_m=64, dq_block_n=64, gluon_dkdv=True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_m=64, block_n=64, num_warps=8, num_stages=2, dq_block_m=64, dq_block_n=64), "block_n=128"),
    (dict(block_m=128, block_n=128, num_warps=8, num_stages=2, dq_block_m=64, dq_block_n=64), "block_m 32 or 64"),
    (dict(block_m=64, block_n=128, num_warps=4, num_stages=2, dq_block_m=64, dq_block_n=64), "num_warps=8"),
    (dict(block_m=64, block_n=128, num_warps=8, num_stages=2), "dq_block_m"),
    (dict(block_m=64, block_n=128, num_warps=8, num_stages=2, dq_atomic=True, dq_tma=True), "dq_tma"),
    (dict(block_m=64, block_n=128, num_warps=8, num_stages=3, tma=True, dq_block_m=64, dq_block_n=64), "tma"),
])
def test_gluon_dkdv_blocks_refuse_what_the_kernel_cannot_take(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TritonAttentionBlocks(**kwargs, gluon_dkdv=True)


def test_gluon_dkdv_pass_runs_emulated_on_the_cpu_and_its_dq_pass_is_triton():
    """On CPU tensors the dK/dV pass runs in the Gluon emulator and its dQ pass is the Triton
    kernel on the dQ tile; the blocks survive the custom op's list."""
    q, k, v = (t.to(torch.float16).requires_grad_() for t in _qkv())
    fwd = triton_attention.default_blocks(128, torch.float16, capability=None)
    assert TritonAttentionBlocks.from_list(GLUON_BWD.as_list()) == GLUON_BWD
    dq = GLUON_BWD.dq_blocks()
    assert (dq.block_m, dq.block_n, dq.gluon_dkdv) == (64, 64, False)
    o = attention_triton(q, k, v, causal=True, blocks=(fwd, GLUON_BWD))
    before = dict(triton_attention.LAUNCHES)
    o.sum().backward()
    ran = {n: c - before.get(n, 0) for n, c in triton_attention.LAUNCHES.items() if c != before.get(n, 0)}
    assert ran == {"_attn_bwd_preprocess_kernel": 1, "_gluon_attn_bwd_dkdv_kernel": 1, "_attn_bwd_dq_kernel": 1}


@pytest.mark.parametrize("change,match", [
    (dict(capability=(8, 0)), "needs sm_90"), (dict(dtype=torch.float32), "float16 or bfloat16"),
    (dict(d=96), "head_dim 64, 128 or 256"),
    (dict(h=12, kvh=4), "power of two"),
])
def test_gluon_bwd_problem_names_what_it_cannot_run(change, match):
    q, k, v = _qkv(**{k: change[k] for k in ("h", "kvh", "d", "dtype") if k in change})
    why = gluon_attention.gluon_bwd_problem(q, k, v, GLUON_BWD, window=None, softcap=None,
                                            segments=change.get("segments", False),
                                            capability=change.get("capability", (9, 0)))
    assert why is not None and match in why
    q, k, v = _qkv()
    for window, softcap, seg in ((None, None, True), (8, None, False), (None, 30.0, False), (64, 50.0, True)):
        assert gluon_attention.gluon_bwd_problem(q, k, v, GLUON_BWD, window=window, softcap=softcap, segments=seg,
                                                 capability=(9, 0)) is None


def test_candidates_offer_the_gluon_dkdv_pass_on_sm90_only():
    for d in (128, 256):
        cands = candidate_blocks(d, torch.bfloat16, backward=True, capability=(9, 0))
        # dQ by Triton, by atomics; and (head_dim 128) the atomic one per query head
        assert sorted(b.dq_atomic for b in cands if b.gluon_dkdv and not b.dkdv_per_head) == [False, True]
        assert [b.dq_atomic for b in cands if b.gluon_dkdv and b.dkdv_per_head] == ([True] if d == 128 else [])
        assert not any(b.gluon_dkdv for b in candidate_blocks(d, torch.bfloat16, backward=True, capability=(8, 0)))


@pytest.mark.parametrize("change,gluon", [
    (dict(), True), (dict(d=256), True), (dict(h=8, kvh=2), True), (dict(dtype=torch.float16), True),
    (dict(features=True), False), (dict(d=64), False), (dict(d=80), False), (dict(dtype=torch.float32), False),
    (dict(cap=(8, 0)), False), (dict(cap=(10, 0)), False), (dict(cap=None), False),
    (dict(h=12, kvh=4), False),  # group size 3: no descriptor tile of whole positions
    (dict(h=128, kvh=1), False),  # group 128: ping-pong's 64 folded rows a warpgroup cannot hold it
])
def test_problem_defaults_take_the_gluon_kernels_where_measured_and_possible(change, gluon):
    """sm_90, 16-bit, head_dim 128 or 256, no window / softcap / segment ids: the Gluon forward
    and, at head_dim 128, the Gluon dK/dV pass (at 256 the Triton two-pass tile; SM90_DEFAULTS,
    timed on an H200 and an H100); anything else keeps the Triton tiles it had, so no input that
    ran before is refused."""
    ta = triton_attention
    opts = dict(d=128, dtype=torch.bfloat16, cap=(9, 0), h=16, kvh=1, features=False) | change
    q, k, v = _qkv(sq=64, skv=64, h=opts["h"], kvh=opts["kvh"], d=opts["d"], dtype=opts["dtype"])
    fwd = ta.default_forward_blocks(q, k, v, opts["cap"], features=opts["features"])
    bwd = ta.default_backward_blocks(q, k, v, opts["cap"], features=opts["features"])
    if gluon:
        assert (fwd, bwd) == ta.SM90_DEFAULTS[opts["d"]]
        assert fwd.gluon == 3 and bwd.dq_atomic and bwd.gluon_dkdv == (opts["d"] == 128)
        assert bwd.dkdv_passes == (1 if opts["d"] == 128 else 2)
    else:
        assert not fwd.gluon and not bwd.gluon_dkdv
        assert fwd == ta.default_blocks(opts["d"], opts["dtype"], capability=opts["cap"])


def test_head_dim_256_backward_default_needs_no_descriptors():
    """At head_dim 256 sm_90's default backward is the Triton pointer tile (two passes, dQ by
    atomics): a group size no Gluon descriptor tile can hold (3) keeps the Triton forward and
    still takes that backward; with features both keep ``default_blocks``."""
    ta = triton_attention
    q, k, v = _qkv(sq=64, skv=64, h=12, kvh=4, d=256, dtype=torch.bfloat16)
    assert ta.default_forward_blocks(q, k, v, (9, 0)) == ta.default_blocks(256, torch.bfloat16, capability=(9, 0))
    assert ta.default_backward_blocks(q, k, v, (9, 0)) == ta.SM90_DEFAULTS[256][1]
    assert ta.default_backward_blocks(q, k, v, (9, 0), features=True) == ta.default_blocks(
        256, torch.bfloat16, backward=True, capability=(9, 0))
