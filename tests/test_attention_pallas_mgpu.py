"""Pallas Mosaic GPU attention (kernels/attention/pallas_mgpu.py), forward and backward,
against references.

What runs where:
  * CPU (always): the kernels execute in Pallas's GPU interpret mode, which simulates
    smem, TMA copies, mbarriers and wgmma; output and gradients (dq, dk, dv) are checked
    against the torch float64 reference with the jnp same-precision baseline
    (``assert_close``). The compiled path is checked by exporting for CUDA (no GPU needed)
    and reading the serialized Mosaic GPU modules: TMA loads, mbarrier waits and wgmma
    instructions must be there, in the forward and in both backward kernels.
  * GPU (``gpu`` marker): the compiled kernels vs float64, and side by side with JAX's own
    Hopper kernel ``jax.experimental.pallas.ops.gpu.attention_mgpu`` (forward; and its
    backward, which is non-causal only). That kernel cannot run in interpret mode on jax
    0.10.2 (it asserts CUDA runtime versions and uses run_state / register-LHS wgmma, which
    the interpreter lacks), so the comparison needs a GPU.
"""
from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from attention_cases import jax_vjp, make_inputs, torch_truth

from kernels import jax_ops
from kernels._platform import pallas_interpret_default
from kernels.attention import reference, reference_jax
from kernels.attention.pallas_mgpu import (
    MgpuAttentionBlocks, attention_pallas_mgpu, default_blocks)

from conftest import assert_close

F16, BF16 = jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)
TWO_STAGES = MgpuAttentionBlocks(block_q=64, block_kv=64, num_stages=2)  # ring wraps often


@dataclasses.dataclass(frozen=True)
class Case:
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: jnp.dtype
    causal: bool = False
    window: int | None = None
    softcap: float | None = None
    batch: int = 1
    blocks: MgpuAttentionBlocks | None = TWO_STAGES
    segments = False  # read by attention_cases.make_inputs: this impl has no segment ids

    @property
    def flags(self) -> dict:
        return dict(causal=self.causal, window=self.window, softcap=self.softcap,
                    scale=self.head_dim**-0.5)

    @property
    def id(self) -> str:
        kind = "mqa" if self.kv_heads == 1 else "mha" if self.kv_heads == self.heads else "gqa"
        parts = [f"{kind}{self.heads}x{self.kv_heads}", f"s{self.q_len}x{self.kv_len}",
                 f"d{self.head_dim}", self.dtype.name]
        if self.causal:
            parts.append("causal")
        if self.window is not None:
            parts.append(f"win{self.window}")
        if self.softcap is not None:
            parts.append(f"cap{self.softcap:g}")
        if self.batch > 1:
            parts.append(f"b{self.batch}")
        if self.blocks is None:
            parts.append("default-blocks")
        return "-".join(parts)


CASES = [
    Case(4, 2, 100, 257, 64, F16, causal=True),  # odd lengths; skipped and masked blocks
    Case(4, 1, 17, 17, 64, BF16, causal=True, batch=2),
    Case(2, 2, 130, 70, 128, BF16, causal=True),  # Sq > Skv: leading rows see no key
    Case(4, 1, 100, 200, 80, F16, window=40, softcap=5.0),  # head_dim padded to 128
    Case(2, 1, 33, 70, 256, BF16, causal=True),  # two 128-wide accumulator chunks
    Case(2, 2, 130, 130, 64, F16, blocks=None),
]
GRAD_CASES = [
    Case(4, 2, 100, 130, 64, F16, causal=True),  # GQA, odd lengths; skipped and masked tiles
    Case(4, 1, 40, 70, 64, BF16, batch=2),  # MQA, not causal: only the padded kv tail masked
    Case(2, 1, 70, 100, 80, F16, window=24, softcap=5.0),  # keys 0..6 seen by no query
    Case(2, 2, 100, 40, 64, BF16, causal=True),  # Sq > Skv: leading rows see no key
    Case(4, 4, 64, 128, 64, F16, blocks=None),  # no padding: the dK/dV kernel's unmasked path
]


def _make(rng, c: Case):
    shapes = [(c.batch, c.q_len, c.heads, c.head_dim), (c.batch, c.kv_len, c.kv_heads, c.head_dim)]
    q = jnp.asarray(rng.standard_normal(shapes[0]), c.dtype)
    k, v = (jnp.asarray(rng.standard_normal(shapes[1]), c.dtype) for _ in range(2))
    return q, k, v


def _truth(q, k, v, **flags):
    t = [torch.tensor(np.asarray(x, np.float64)) for x in (q, k, v)]
    return reference._attention(*t, q_segment_ids=None, kv_segment_ids=None, **flags)


def _check(q, k, v, c: Case, *, interpret=None):
    flags = dict(causal=c.causal, window=c.window, softcap=c.softcap, scale=c.head_dim**-0.5)
    out = attention_pallas_mgpu(q, k, v, q_segment_ids=None, kv_segment_ids=None,
                                blocks=c.blocks, interpret=interpret, **flags)
    base = reference_jax._attention(q, k, v, q_segment_ids=None, kv_segment_ids=None,
                                    upcast=False, **flags)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close(out, _truth(q, k, v, **flags), base, c.dtype, "out")
    return out


def _check_grads(q, k, v, do, c: Case, *, interpret=None):
    """o, dq, dk, dv by jax.vjp through the kernels vs float64, jnp same-precision baseline."""
    f = c.flags
    kernel = jax_vjp(lambda q, k, v: attention_pallas_mgpu(
        q, k, v, q_segment_ids=None, kv_segment_ids=None, blocks=c.blocks, interpret=interpret,
        **f), q, k, v, do)
    base = jax_vjp(lambda q, k, v: reference_jax._attention(
        q, k, v, q_segment_ids=None, kv_segment_ids=None, upcast=False, **f), q, k, v, do)
    truth = torch_truth(q, k, v, do, (None, None), **f)
    for what, out, x in zip(("out", "dq", "dk", "dv"), kernel, (q, q, k, v)):
        assert out.dtype == x.dtype and out.shape == x.shape, what
    for what, out, ref64, b in zip(("out", "dq", "dk", "dv"), kernel, truth, base):
        assert_close(out, ref64, b, c.dtype, what)
    return kernel


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference_interpret(rng, case):
    _check(*_make(rng, case), case, interpret=True)


# 64-row / 64-key tiles, one q tile: shift 62 (= -2 mod 64: query 0 at position 62 sits next to
# a block edge) and shift 64 with window 2 (its window starts at key 63, the last of a block):
# an off-by-one in block_ranges' unmasked or window bound moves a block to the wrong loop
RESIDUE_CASES = [Case(2, 2, 8, 70, 64, F16, causal=True, batch=2),
                 Case(2, 2, 8, 72, 64, F16, causal=True, window=2, batch=2)]


@pytest.mark.parametrize("case", RESIDUE_CASES, ids=lambda c: c.id)
def test_block_ranges_at_residues_interpret(rng, case):
    _check(*_make(rng, case), case, interpret=True)


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
def test_gradients_match_reference_interpret(rng, case):
    """The custom_vjp: forward (+ log-sum-exp), dK/dV kernel and dQ kernel, interpreted."""
    _check_grads(*make_inputs(rng, case)[:4], case, interpret=True)


def test_public_api_runs_mosaic_kernel_and_zeroes_keyless_rows(rng):
    """jax_ops.attention(impl="pallas_mgpu") traces the Mosaic GPU kernels (TMA + wgmma),
    forward and backward, and returns exact zeros, as output and as dq, for queries placed
    before the first key (bottom-right causal)."""
    q, k, v = _make(rng, Case(4, 2, 40, 24, 64, F16))
    fn = lambda q, k, v: jax_ops.attention(q, k, v, causal=True, impl="pallas_mgpu")
    text = str(jax.make_jaxpr(lambda q, k, v: jax.vjp(fn, q, k, v)[1](q))(q, k, v))
    assert text.count("wgmma") >= 2 + 4 + 3  # forward QK^T, PV; dK/dV kernel 4; dQ kernel 3
    assert "copy_gmem_to_smem" in text and "barrier_wait" in text
    o, vjp = jax.vjp(fn, q, k, v)
    o, dq = np.asarray(o), np.asarray(vjp(q)[0])
    assert np.all(o[:, :16] == 0) and np.all(np.any(o[:, 16:] != 0, axis=-1))
    # query 16 sees key 0 alone: its softmax is constant, so its dq is 0 up to rounding
    assert np.all(dq[:, :16] == 0) and np.all(np.any(dq[:, 17:] != 0, axis=-1))
    base = reference_jax._attention(q, k, v, causal=True, window=None, softcap=None,
                                    scale=0.125, q_segment_ids=None, kv_segment_ids=None,
                                    upcast=False)
    truth = _truth(q, k, v, causal=True, window=None, softcap=None, scale=0.125)
    assert_close(o, truth, base, F16, "out")


def test_refuses_float32_segments_and_wide_head_gradients():
    q = jnp.zeros((1, 8, 2, 64), jnp.float32)
    with pytest.raises(TypeError, match="impl='pallas_mgpu'.*float16 or bfloat16.*float32"):
        jax_ops.attention(q, q, q, impl="pallas_mgpu")
    q = q.astype(jnp.float16)
    ids = jnp.zeros((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="impl='pallas_mgpu' does not support segment_ids"):
        jax_ops.attention(q, q, q, segment_ids=ids, impl="pallas_mgpu")
    q = jnp.zeros((1, 8, 2, 256), jnp.float16)  # the forward runs head_dim 256, the backward not
    loss = lambda q: jax_ops.attention(q, q, q, impl="pallas_mgpu").astype(jnp.float32).sum()
    with pytest.raises(NotImplementedError, match="backward supports head_dim <= 128, got 256"):
        jax.eval_shape(jax.grad(loss), q)


@pytest.mark.parametrize("kwargs", [dict(block_q=32), dict(block_q=192), dict(block_kv=96),
                                    dict(num_stages=0), dict(num_stages=True)],
                         ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_blocks_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MgpuAttentionBlocks(**kwargs)


def _mosaic_gpu_modules(exported):
    """The Mosaic GPU kernels inside an export: op-name counts and inline-asm strings."""
    from jax._src.interpreters import mlir as jmlir
    from jax._src.lib.mlir import ir

    kernels = []
    with jmlir.make_ir_context() as ctx:
        ctx.allow_unregistered_dialects = True  # the kernel body is a stable_mosaic_gpu blob
        blobs = []

        def find(op):  # read the attributes here: the walk's op handles do not outlive it
            if (op.name == "stablehlo.custom_call" and
                    ir.StringAttr(op.attributes["call_target_name"]).value == "mosaic_gpu_v2"):
                config = ir.DictAttr(op.attributes["mhlo.backend_config"])
                blobs.append(ir.StringAttr(config["module"]).value_bytes)
            return ir.WalkResult.ADVANCE

        ir.Module.parse(exported.mlir_module()).operation.walk(find)
        for blob in blobs:
            ops, asm = collections.Counter(), []

            def visit(op):
                ops[op.name.removeprefix("stable_mosaic_gpu.")] += 1
                if op.name.endswith("llvm.inline_asm"):
                    asm.append(ir.StringAttr(op.attributes["asm_string"]).value)
                return ir.WalkResult.ADVANCE

            ir.Module.parse(blob).operation.walk(visit)
            kernels.append((ops, asm))
    return kernels


@pytest.mark.parametrize("head_dim,causal", [(128, True), (256, False)])
def test_lowers_to_mosaic_gpu_for_cuda(head_dim, causal):
    """The compiled path (interpret=False) lowers to one Mosaic GPU kernel with TMA loads
    behind mbarriers, TMA stores and wgmma, checked without a GPU by exporting for CUDA.
    Not covered here: ptxas (registers, spills) and running it; see the gpu tests."""
    from jax import export

    q = jax.ShapeDtypeStruct((1, 100, 4, head_dim), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((1, 257, 2, head_dim), jnp.bfloat16)
    fn = lambda q, k, v: attention_pallas_mgpu(
        q, k, v, causal=causal, window=40 if causal else None, softcap=5.0, scale=0.1,
        q_segment_ids=None, kv_segment_ids=None, interpret=False)
    [(ops, asm)] = _mosaic_gpu_modules(export.export(jax.jit(fn), platforms=("cuda",))(q, k, k))
    chunks = head_dim // 128
    loops = 3 if causal else 2  # window edge / unmasked / masked-tail K/V loops
    stages = default_blocks(head_dim).num_stages
    # TMA loads per chunk: Q once; K^T and V in each unrolled prologue slot and each loop's refill
    assert ops["nvvm.cp.async.bulk.tensor.shared.cluster.global"] == chunks * (1 + 2 * (stages + loops))
    assert ops["nvvm.cp.async.bulk.tensor.global.shared.cta"] == chunks  # TMA store of O
    assert ops["nvvm.mbarrier.arrive.expect_tx"] >= chunks * 3
    assert ops["nvvm.mbarrier.try_wait.parity"] >= chunks * 3
    assert ops["nvvm.wgmma.commit.group.sync.aligned"] == loops * 2 * chunks  # QK^T, P V per chunk
    assert any("wgmma.mma_async" in a for a in asm)
    assert ops["scf.for"] >= 1  # the K/V loop is a device loop (a 1-step tail loop is inlined)


@pytest.mark.parametrize("head_dim,causal", [(128, True), (64, False)])
def test_backward_lowers_to_mosaic_gpu_for_cuda(head_dim, causal):
    """jax.grad lowers to three Mosaic GPU kernels (forward with log-sum-exp, dK/dV, dQ), each
    with TMA loads behind mbarriers, TMA stores and wgmma, exported for CUDA without a GPU."""
    from jax import export

    q = jax.ShapeDtypeStruct((1, 100, 4, head_dim), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((1, 257, 2, head_dim), jnp.bfloat16)
    loss = lambda q, k, v: attention_pallas_mgpu(
        q, k, v, causal=causal, window=40 if causal else None, softcap=5.0, scale=0.1,
        q_segment_ids=None, kv_segment_ids=None, interpret=False).astype(jnp.float32).sum()
    exported = export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=("cuda",))(q, k, k)
    _, (dkv, dkv_asm), (dq, dq_asm) = _mosaic_gpu_modules(exported)
    stages = default_blocks(head_dim).num_stages
    loops = 3 if causal else 2  # dQ: window edge / unmasked / masked-tail K/V loops
    # dK/dV: K, V once; Q, Q^T, dO, dO^T, L, delta per prologue slot (ring <= 2) and refill
    assert dkv["nvvm.cp.async.bulk.tensor.shared.cluster.global"] == 2 + 6 * (min(stages, 2) + 1)
    assert dkv["nvvm.cp.async.bulk.tensor.global.shared.cta"] == 2  # TMA stores of dK, dV
    assert dkv["nvvm.wgmma.commit.group.sync.aligned"] == 4  # S^T, dP^T, dV, dK
    # dQ: Q, dO, L, delta once; K^T, K, V^T per prologue slot and per loop's refill
    assert dq["nvvm.cp.async.bulk.tensor.shared.cluster.global"] == 4 + 3 * (stages + loops)
    assert dq["nvvm.cp.async.bulk.tensor.global.shared.cta"] == 1  # TMA store of dQ
    assert dq["nvvm.wgmma.commit.group.sync.aligned"] == 3 * loops  # S, dP, dQ per loop
    for ops, asm in ((dkv, dkv_asm), (dq, dq_asm)):
        assert ops["nvvm.mbarrier.try_wait.parity"] >= 3 and ops["scf.for"] >= 1
        assert any("wgmma.mma_async" in a for a in asm)


# ----------------------------------------------------------------------------- GPU only


def _mgpu_peer():
    from jax.experimental.pallas.ops.gpu import attention_mgpu

    return attention_mgpu


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_compiled_matches_reference_gpu(rng, case):
    assert not pallas_interpret_default()
    _check(*_make(rng, case), case, interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
def test_compiled_gradients_match_reference_gpu(rng, case):
    assert not pallas_interpret_default()
    _check_grads(*make_inputs(rng, case)[:4], case, interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (4, 2, 128), (4, 1, 128)])
def test_gradients_side_by_side_with_jax_attention_mgpu_gpu(rng, heads, kv_heads, head_dim):
    """JAX's Hopper backward on the same inputs: non-causal only (it refuses causal), float16
    only (its dK/dV buffers are float16), no softmax scale (folded into q), lengths multiples
    of its blocks; it writes dK/dV per query head and sums them outside the kernel."""
    am = _mgpu_peer()
    if not hasattr(am.TuningConfig, "has_backward_blocks"):
        pytest.skip(f"jax {jax.__version__}'s attention_mgpu has no backward")
    c = Case(heads, kv_heads, 256, 256, head_dim, F16, batch=2, blocks=None)
    q, k, v, do, _ = make_inputs(rng, c)
    q = q * jnp.asarray(head_dim**-0.5, F16)
    flags = dict(causal=False, window=None, softcap=None, scale=1.0)
    config = am.TuningConfig(block_q=64, block_kv=64, max_concurrent_steps=2, block_q_dkv=64,
                             block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)
    ours = jax_vjp(lambda q, k, v: attention_pallas_mgpu(
        q, k, v, q_segment_ids=None, kv_segment_ids=None, interpret=False, **flags), q, k, v, do)
    peer = jax_vjp(lambda q, k, v: am.attention(q, k, v, config), q, k, v, do)
    base = jax_vjp(lambda q, k, v: reference_jax._attention(
        q, k, v, q_segment_ids=None, kv_segment_ids=None, upcast=False, **flags), q, k, v, do)
    truth = torch_truth(q, k, v, do, (None, None), **flags)
    for what, a, p, r, b in zip(("out", "dq", "dk", "dv"), ours, peer, truth, base):
        assert_close(a, r, b, F16, f"pallas_mgpu {what}")
        assert_close(p, r, b, F16, f"attention_mgpu {what} (the peer, same bound)")


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,head_dim,dtype,causal", [
    (4, 4, 64, F16, False), (4, 2, 128, BF16, False), (4, 1, 128, F16, True),
    (2, 2, 64, BF16, True)])
def test_side_by_side_with_jax_attention_mgpu_gpu(rng, heads, kv_heads, head_dim, dtype, causal):
    """Same inputs through JAX's Hopper kernel: no softmax scale there (so scale=1 here),
    top-left causal (= bottom-right when q_len == kv_len), lengths multiples of 128."""
    am = _mgpu_peer()
    c = Case(heads, kv_heads, 256, 256, head_dim, dtype, causal=causal, batch=2, blocks=None)
    q, k, v = _make(rng, c)
    q = q * jnp.asarray(head_dim**-0.5, dtype)  # fold the scale into q for both kernels
    ours = attention_pallas_mgpu(q, k, v, causal=causal, window=None, softcap=None, scale=1.0,
                                 q_segment_ids=None, kv_segment_ids=None, interpret=False)
    truth = _truth(q, k, v, causal=causal, window=None, softcap=None, scale=1.0)
    base = reference_jax._attention(q, k, v, causal=causal, window=None, softcap=None,
                                    scale=1.0, q_segment_ids=None, kv_segment_ids=None,
                                    upcast=False)
    assert_close(ours, truth, base, dtype, "pallas_mgpu")  # ours is checked whatever the peer does
    try:
        peer = am.attention(q, k, v, am.TuningConfig(block_q=64, block_kv=64,
                                                     max_concurrent_steps=2, causal=causal))
    except ValueError as e:  # the peer refuses causal on CUDA 12.8.0 - 12.9.0 (ptxas bug), and
        # bfloat16 in jax 0.11.2 on an H200 ("src had type bfloat16 and dst had type float16")
        if "ptxas" not in str(e) and "Expected dtypes to match" not in str(e):
            raise
        pytest.skip(f"attention_mgpu (the peer) refuses this case here: {str(e)[:200]}")
    assert_close(peer, truth, base, dtype, "attention_mgpu (the peer, same bound)")
