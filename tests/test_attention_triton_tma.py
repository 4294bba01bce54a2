"""The TMA forward (``TritonAttentionBlocks(tma=True)``) and ``blocks="autotune"``, on CPU.

The interpreter runs tensor-descriptor loads and stores with the copy engine's semantics
(zero fill past the edges, clipped stores), so the folded-row tiles [1, block_m / G, G, D],
the edge blocks and head_dim 80 (a 128-wide box) are checked here against float64, in the
forward and in both backward passes (TMA q/dO tiles in dk/dv, k/v tiles in dq). The hardware path (sm_90) is
checked compiled in ``test_triton_aot.py`` and on a GPU by ``test_attention_gpu.py``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kernels.attention import triton_attention, triton_autotune
from kernels.attention.triton_attention import TritonAttentionBlocks, attention_triton
from test_attention_triton import CASES, Case, _check_against_reference, _inputs, _run

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

TMA = TritonAttentionBlocks(32, 32, 4, 1, tma=True)
POINTER = TritonAttentionBlocks(32, 32, 4, 1)
# MQA/GQA/MHA, length 1, Sq > Skv, odd lengths, head_dim 80 and 256, window, softcap, segments
TMA_CASES = [CASES[i] for i in (0, 2, 3, 6, 7, 8, 9)] + [Case(2, 33, 70, 8, 1, 64, causal=True)]
# each case in one dtype (the 16-bit boxes on the masked head_dims 80 and 256, softcap and the
# GQA/MQA folds; fp32 on length 1, Sq > Skv, batch 2 with segments), CASES[2] in both: the
# descriptors' byte boxes change with the element size, the tile logic does not
FP16 = {CASES[2], CASES[6], CASES[8], CASES[9]}
TMA_RUNS = [(c, torch.float16 if c in FP16 else torch.float32) for c in TMA_CASES] + [(CASES[2], torch.float32)]


@pytest.mark.parametrize("case,dtype", TMA_RUNS,
                         ids=[f"{c.id}-{'fp16' if d == torch.float16 else 'fp32'}" for c, d in TMA_RUNS])
def test_tma_passes_match_reference_and_pointer_kernels(rng, case, dtype):
    tensors, do, kwargs = _inputs(rng, case)
    names = ("_attn_fwd_tma_kernel", "_attn_bwd_dkdv_tma_kernel", "_attn_bwd_dq_tma_kernel")
    before = [triton_attention.LAUNCHES[n] for n in names]
    got, _ = _check_against_reference(tensors, do, dtype, kwargs, blocks=TMA)
    assert [triton_attention.LAUNCHES[n] for n in names] == [b + 1 for b in before]
    pointer = _run(attention_triton, tensors, do, dtype, blocks=POINTER, **kwargs)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, pointer):  # same tiles, same math
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_tma_refuses_what_a_descriptor_cannot_address(rng):
    tensors, _, kwargs = _inputs(rng, Case(1, 9, 9, 3, 1, 64))  # G = 3: not a power of two
    with pytest.raises(ValueError, match=r"blocks: tma=True .* group size 3"):
        attention_triton(*(t.float() for t in tensors), blocks=TMA, **kwargs)
    tensors, _, kwargs = _inputs(rng, Case(1, 9, 9, 2, 1, 64))
    q, k, v = (t.float() for t in tensors)
    wide = torch.zeros(*q.shape[:-1], 65)
    wide[..., :64] = q
    with pytest.raises(ValueError, match=r"q's base and strides must be positive and 16-byte aligned"):
        attention_triton(wide[..., :64], k, v, blocks=TMA, **kwargs)
    with pytest.raises(ValueError, match="unit head_dim stride"):
        attention_triton(q, k.transpose(1, 3).contiguous().transpose(1, 3), v, blocks=TMA, **kwargs)


def test_tma_backward_takes_a_strided_output_gradient(rng):
    """out.sum() gives an expanded dO (stride 0): the launcher copies it for the descriptors."""
    tensors, _, kwargs = _inputs(rng, Case(1, 20, 30, 4, 2, 64, causal=True))
    grads = []
    for blocks in (TMA, POINTER):
        leaves = [t.float().requires_grad_() for t in tensors]
        attention_triton(*leaves, blocks=blocks, **kwargs).sum().backward()
        grads.append([t.grad for t in leaves])
    for name, a, b in zip(("dq", "dk", "dv"), *grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_tma_backward_refuses_the_pipeline_depth_ptxas_crashes_on(rng):
    tensors, do, kwargs = _inputs(rng, Case(1, 9, 9, 2, 1, 64))
    leaves = [t.float().requires_grad_() for t in tensors]
    out = attention_triton(*leaves, blocks=TritonAttentionBlocks(32, 32, 4, 2, tma=True), **kwargs)
    with pytest.raises(ValueError, match="blocks: the TMA backward cannot use num_stages=2"):
        out.backward(do.float())
    assert triton_attention.tma_blocks(TritonAttentionBlocks(64, 64, 8, 2), backward=True) == \
        TritonAttentionBlocks(64, 64, 8, 3, tma=True)


def test_blocks_argument_checked(rng):
    tensors, _, kwargs = _inputs(rng, Case(1, 5, 5, 2, 1, 16))
    with pytest.raises(TypeError, match="blocks: expected None, 'autotune'"):
        attention_triton(*(t.float() for t in tensors), blocks="fastest", **kwargs)
    with pytest.raises(ValueError, match="tma=1 must be a bool"):
        TritonAttentionBlocks(32, 32, 4, 1, tma=1)


def test_autotune_times_candidates_once_per_problem_class(rng):
    """Inputs that require grad tune the forward and the backward (the interpreter's candidates:
    pointer and TMA forwards; shared and two-pass dK/dV backwards); both picks pass the float64
    check, and a second call of the class times nothing."""
    case = Case(1, 40, 40, 4, 1, 64, causal=True)
    tensors, do, kwargs = _inputs(rng, case)
    triton_autotune.TUNING.clear()
    got, _ = _check_against_reference(tensors, do, torch.float32, kwargs, blocks="autotune")
    assert len(triton_autotune.TUNING) == 2
    q, k, v = (t.float() for t in tensors)
    fwd, bwd = (triton_autotune.tuning_record(q, k, causal=True, backward=b) for b in (False, True))
    assert [c["blocks"]["tma"] for c in fwd["candidates"]] == [False, True]
    assert [c["blocks"]["dkdv_passes"] for c in bwd["candidates"]] == [1, 2]
    for record in (fwd, bwd):
        assert all(c["ms"] is not None and c["ms"] > 0 for c in record["candidates"])
        assert record["pick"] in [c["blocks"] for c in record["candidates"]]
    before = dict(triton_attention.LAUNCHES)
    again = attention_triton(q, k, v, blocks="autotune", **kwargs)  # same class: no timing
    launched = sum(triton_attention.LAUNCHES[n] - before.get(n, 0)
                   for n in ("_attn_fwd_kernel", "_attn_fwd_tma_kernel", "_attn_bwd_dq_kernel"))
    assert launched == 1 and len(triton_autotune.TUNING) == 2
    torch.testing.assert_close(again, got[0], rtol=0, atol=0)


def test_autotune_rules_out_a_candidate_that_fails(rng, monkeypatch):
    """A candidate whose launch fails (here the refused 2-stage TMA backward) is recorded with
    its error and skipped; the pick is among the rest. None running is an error."""
    case = Case(1, 20, 20, 4, 1, 32, causal=True)
    tensors, _, kwargs = _inputs(rng, case)
    q, k, v = (t.float().requires_grad_() for t in tensors)
    bad = TritonAttentionBlocks(16, 16, 4, 2, tma=True)
    good = TritonAttentionBlocks(16, 16, 4, 1)
    monkeypatch.setattr(triton_autotune, "_candidates",
                        lambda q, backward, bidirectional=False: [bad, good] if backward else [good])
    triton_autotune.TUNING.clear()
    attention_triton(q, k, v, blocks="autotune", **kwargs)
    record = triton_autotune.tuning_record(q, k, causal=True, backward=True)
    assert record["pick"] == dataclasses.asdict(good)
    assert record["candidates"][0]["ms"] is None and "num_stages=2" in record["candidates"][0]["skipped"]
    monkeypatch.setattr(triton_autotune, "_candidates",
                        lambda q, backward, bidirectional=False: [bad] if backward else [good])
    triton_autotune.TUNING.clear()
    with pytest.raises(RuntimeError, match="no candidate runs"):
        attention_triton(q, k, v, blocks="autotune", **kwargs)


def test_default_backward_takes_tma_only_where_measured_and_possible():
    """sm_90 bf16 head_dim 128 with a window, softcap or segment ids (no Gluon default there): the
    TMA backward (measured faster); head_dim 256, fp32, sm_80 or a problem no descriptor can
    address: the pointer tiles, so no input is newly refused. Without features sm_90 takes the
    Gluon pass (test_attention_gluon.py)."""
    ta = triton_attention

    def pick(d=128, dtype=torch.bfloat16, cap=(9, 0), h=8, kvh=1, sq=64):
        q = torch.zeros(1, sq, h, d, dtype=dtype)
        k = v = torch.zeros(1, 64, kvh, d, dtype=dtype)
        return ta.default_backward_blocks(q, k, v, cap, features=True)

    base = ta.default_blocks(128, torch.bfloat16, backward=True, capability=(9, 0))
    assert pick() == ta.tma_blocks(base, backward=True)
    assert not pick(d=256).tma and not pick(dtype=torch.float32).tma and not pick(cap=(8, 0)).tma
    assert not pick(h=6, kvh=2).tma  # group size 3: a q tile of whole positions is impossible
    assert not pick(cap=None).tma  # the interpreter


@pytest.mark.parametrize("case", [CASES[0], Case(2, 33, 70, 8, 1, 64, causal=True)], ids=lambda c: c.id)
def test_tma_backward_with_its_own_dq_tile(rng, case):
    """dK/dV on 16-row x 32-key tiles, dQ on 32 x 16 (descriptor boxes per pass); and dV and dK
    in two TMA launches."""
    tensors, do, kwargs = _inputs(rng, case)
    blocks = TritonAttentionBlocks(16, 32, 4, 1, tma=True, dq_block_m=32, dq_block_n=16)
    _check_against_reference(tensors, do, torch.float32, kwargs, blocks=blocks)
    _check_against_reference(tensors, do, torch.float32, kwargs,
                             blocks=dataclasses.replace(blocks, dkdv_passes=2))


def test_tma_backward_with_dq_by_atomics(rng):
    """q and dO through descriptors in the dK/dV pass, dQ added by pointer atomics from it."""
    tensors, do, kwargs = _inputs(rng, Case(2, 33, 70, 8, 1, 64, causal=True))
    blocks = TritonAttentionBlocks(16, 32, 4, 1, tma=True, dq_atomic=True)
    _check_against_reference(tensors, do, torch.float32, kwargs, blocks=blocks)


# MQA with G = 8; GQA G = 2 with segments; Sq > Skv at head_dim 256 with softcap, two passes
DQ_TMA_CASES = [(Case(2, 33, 70, 8, 1, 64, causal=True), 1, torch.float32), (CASES[7], 1, torch.float16),
                (Case(1, 57, 40, 4, 2, 256, causal=True, softcap=5.0), 2, torch.float32)]


@pytest.mark.parametrize("case,passes,dtype", DQ_TMA_CASES,
                         ids=[f"{c.id}-passes{p}-{str(d)[6:]}" for c, p, d in DQ_TMA_CASES])
def test_dq_by_tensor_descriptor_reductions(rng, monkeypatch, case, passes, dtype):
    """dq_tma: the dK/dV pass adds each dQ tile with one descriptor reduction (the interpreter
    runs them through kernels._platform's shim, the semantics of sm_90's bulk reduction:
    in-bounds elements added, rows past Sq skipped); float64 agreement, no dQ kernel."""
    from kernels import _platform
    from triton.runtime import interpreter

    _platform.interpreter_descriptor_reduce()
    calls = []
    reduce = interpreter.InterpreterBuilder.create_descriptor_reduce
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_descriptor_reduce",
                        lambda self, *a: calls.append(1) or reduce(self, *a))
    tensors, do, kwargs = _inputs(rng, case)
    before = triton_attention.LAUNCHES["_attn_bwd_dq_kernel"]
    blocks = TritonAttentionBlocks(16, 32, 4, 1, dkdv_passes=passes, dq_atomic=True, dq_tma=True)
    _check_against_reference(tensors, do, dtype, kwargs, blocks=blocks)
    assert calls and triton_attention.LAUNCHES["_attn_bwd_dq_kernel"] == before


def test_dq_tma_refuses_what_it_cannot_tile_before_any_launch(rng):
    tensors, do, kwargs = _inputs(rng, Case(1, 9, 9, 6, 2, 64, causal=True))  # G = 3
    q, k, v = (t.float().requires_grad_() for t in tensors)
    out = attention_triton(q, k, v, **kwargs, blocks=(POINTER, TritonAttentionBlocks(
        16, 16, 4, 1, dq_atomic=True, dq_tma=True)))
    before = dict(triton_attention.LAUNCHES)
    with pytest.raises(ValueError, match="dq_tma=True cannot run this problem: the group size 3"):
        out.backward(do.float())
    assert dict(triton_attention.LAUNCHES) == before
    with pytest.raises(ValueError, match="dq_tma=True must be a bool, True only with dq_atomic=True"):
        TritonAttentionBlocks(16, 16, 4, 1, dq_tma=True)
