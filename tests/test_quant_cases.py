"""4-bit quantization cases found by mutation testing (kernels/int4, model/quantize.py,
model/gptq.py): argument checks that name the argument, the spec's round-to-nearest codes
(one-signed groups, code -8), the int8 embedding and its chunked head, the scheme kept by the
quantize helpers, checkpoint writes (atomic, shapes checked against the config), and GPTQ
against an independent float64 optimal-brain-surgeon reference (group scales across block
boundaries, damping relative to H, every calibration batch, sequential calibration)."""
from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pytest
import torch

from kernels import torch_ops  # noqa: F401  (sets TRITON_INTERPRET before any kernel import)
from kernels.int4 import reference as ref_torch
from model import quantize as mq
from model.config import KernelConfig, ModelConfig

# a model small enough to calibrate in a second: every projection's input dim divisible by 16
SMALL = ModelConfig(name="q", vocab_size=96, width=32, layers=2, heads=2, kv_heads=1, head_dim=16,
                    mlp_dim=64, max_seq_len=16)


# --- independent float64 references of kernels/int4/spec.py ------------------------------

def spec_rtn(w: torch.Tensor, g: int, asym: bool, scale_dtype=torch.float16):
    """The spec's group-wise round-to-nearest in float64: (codes [out, in], scales [in // g, out],
    zeros [in // g, out] (8 when symmetric)). The scale is the group's range over 7 (15) in w's
    float32, rounded to ``scale_dtype``; a zero scale is 1."""
    out, k = w.shape
    wg = w.float().reshape(out, k // g, g)
    if asym:
        lo = torch.minimum(wg.amin(-1), torch.zeros(()))
        hi = torch.maximum(wg.amax(-1), torch.zeros(()))
        s = ((hi - lo) / 15.0).to(scale_dtype).double()
    else:
        s = (wg.abs().amax(-1) / 7.0).to(scale_dtype).double()
    s = torch.where(s == 0, torch.ones_like(s), s)
    wd = wg.double()
    if asym:
        z = torch.clamp(torch.round(-lo.double() / s), 0, 15)
        q = torch.clamp(torch.round(wd / s[..., None]) + z[..., None], 0, 15)
    else:
        z = torch.full_like(s, 8.0)
        q = torch.clamp(torch.round(wd / s[..., None]), -8, 7) + 8
    return q.reshape(out, k), s.t(), z.t()


def spec_gptq(w: torch.Tensor, h: torch.Tensor, g: int, asym: bool, percdamp: float = 0.01):
    """GPTQ in float64 the textbook way: one column at a time, its error (W - Q) / Hinv[i, i]
    spread onto the later columns through row i of the current inverse Hessian, which then
    drops column i (Schur complement); a group's scale from its columns as updated so far.
    No Cholesky, no blocks: independent of model/gptq.py's lazy-batch formulation."""
    W, H = w.double().clone(), h.double().clone()
    k = W.shape[1]
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * H.diagonal().mean() * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    S = torch.zeros(k // g, W.shape[0], dtype=torch.float64)
    Z = torch.zeros_like(S)
    for i in range(k):
        if i % g == 0:
            _, s, z = spec_rtn(W[:, i:i + g].float(), g, asym)
            S[i // g], Z[i // g] = s[0], z[0]
            s, z = s[0], z[0]
        if asym:
            q = torch.clamp(torch.round(W[:, i] / s) + z, 0, 15)
        else:
            q = torch.clamp(torch.round(W[:, i] / s), -8, 7) + 8
        Q[:, i] = q
        d = hinv[i, i]
        err = (W[:, i] - (q - z) * s) / d
        W[:, i + 1:] -= err[:, None] * hinv[i, None, i + 1:]
        hinv = hinv - torch.outer(hinv[:, i], hinv[i, :]) / d
    return Q, S, Z


def correlated_hessian(rows: int, k: int, seed: int) -> torch.Tensor:
    """H = 2 X^T X / n of strongly correlated inputs X = z A + noise (fresh per seed)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5
    x = torch.randn(rows, k, generator=g) @ mix + 0.1 * torch.randn(rows, k, generator=g)
    return 2.0 * x.double().T @ x.double() / rows


# --- argument checks ------------------------------------------------------------------------

def test_int4_matmul_bad_arguments_are_named_before_any_launch():
    """Mutations S5 (zeros shape unchecked), S6 (scales dtype unchecked), S7 (x dtype unchecked),
    S8 (out = 0 accepted): each bad argument is refused by name, in torch and JAX, and the Triton
    kernel never launches."""
    import jax.numpy as jnp

    from kernels import jax_ops
    from kernels.int4.triton_int4 import LAUNCHES

    cases = [  # (override, error type, message fragment)
        (dict(zeros=("z", (4, 7))), ValueError, "zeros must have shape [in // group_size, out] = [4, 8]"),
        (dict(scales=("s64", (4, 8))), TypeError, "scales dtype must be one of"),
        (dict(x=("x64", (2, 128))), TypeError, "x dtype must be one of"),
        (dict(packed_w=("p", (0, 64)), scales=("s", (4, 0))), ValueError, "in and out must be >= 1"),
    ]
    for fw in ("torch", "jax"):
        if fw == "torch":
            mk = {"x": lambda s: torch.zeros(s, dtype=torch.float16), "x64": lambda s: torch.zeros(s, dtype=torch.float64),
                  "p": lambda s: torch.zeros(s, dtype=torch.uint8), "s": lambda s: torch.zeros(s, dtype=torch.float16),
                  "s64": lambda s: torch.zeros(s, dtype=torch.float64), "z": lambda s: torch.zeros(s, dtype=torch.float16)}
            call = lambda *a: torch_ops.int4_matmul(*a, impl="triton")  # noqa: E731
        else:
            mk = {"x": lambda s: jnp.zeros(s, jnp.float16), "x64": lambda s: jnp.zeros(s, jnp.int32),
                  "p": lambda s: jnp.zeros(s, jnp.uint8), "s": lambda s: jnp.zeros(s, jnp.float16),
                  "s64": lambda s: jnp.zeros(s, jnp.int32), "z": lambda s: jnp.zeros(s, jnp.float16)}
            call = lambda *a: jax_ops.int4_matmul(*a, impl="pallas")  # noqa: E731
        good = dict(x=("x", (2, 128)), packed_w=("p", (8, 64)), scales=("s", (4, 8)), zeros=("z", (4, 8)))
        before = LAUNCHES["_int4_matmul_kernel"]
        for override, err, text in cases:
            kw = {n: mk[kind](shape) for n, (kind, shape) in {**good, **override}.items()}
            with pytest.raises(err, match=re.escape(text)):
                call(kw["x"], kw["packed_w"], kw["scales"], kw["zeros"], 32)
        assert LAUNCHES["_int4_matmul_kernel"] == before, fw


# --- round-to-nearest codes -------------------------------------------------------------------

@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
def test_rtn_codes_match_the_spec_on_one_signed_groups(asym):
    """Mutations R3 / R4 (torch) and J2 (JAX): the asymmetric range must hold 0. A group of only
    positive (only negative) weights, as a bias-like row has, keeps every value within half a
    step; without the clamp its zero point clips to 0 (15) and the large values saturate. Codes,
    scales and zeros of both quantizers equal the float64 spec formulas exactly."""
    import jax.numpy as jnp

    from kernels.int4 import reference_jax

    g = 32
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(6, 4 * g, generator=gen)
    w[0, :g] = 0.5 + torch.rand(g, generator=gen)  # all positive
    w[1, g:2 * g] = -0.5 - torch.rand(g, generator=gen)  # all negative
    w[2, 2 * g:3 * g] = 0.0  # all zero
    w[3, 3 * g:] = torch.rand(g, generator=gen) * 1e-3 + 2.0  # positive, narrow
    q_ref, s_ref, z_ref = spec_rtn(w, g, asym)
    packed, scales, zeros = ref_torch.quantize_int4(w, g, asymmetric=asym)
    assert torch.equal(ref_torch.unpack_int4(packed).double(), q_ref)
    assert torch.equal(scales.double(), s_ref)
    assert (zeros is None) == (not asym) and (zeros is None or torch.equal(zeros.double(), z_ref))
    pj, sj, zj = reference_jax.quantize_int4(jnp.asarray(w.numpy()), g, asymmetric=asym)
    np.testing.assert_array_equal(np.asarray(pj), packed.numpy())
    np.testing.assert_array_equal(np.asarray(sj, np.float64), s_ref.numpy())
    if asym:
        np.testing.assert_array_equal(np.asarray(zj, np.float64), z_ref.numpy())
    # what the user sees: every weight within half a step (plus the fp16 scale rounding)
    dq = (q_ref - z_ref.t().repeat_interleave(g, 1)) * s_ref.t().repeat_interleave(g, 1)
    step = s_ref.t().repeat_interleave(g, 1)
    assert torch.all((dq - w.double()).abs() <= 0.5 * step * (1 + 2e-3) + 1e-12)


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
def test_jax_and_torch_scales_agree_where_the_division_rounds_differently(asym):
    """Mutation J1 (the JAX quantizer's range / 15 as a plain division, which XLA turns into a
    multiply by the inexact reciprocal): on group ranges r where fp16(r / c) differs from
    fp16(r * fl(1 / c)), the JAX and PyTorch quantizers still write the same scales and codes,
    those of the correctly rounded spec formula (a file quantized by either loads the same)."""
    import jax.numpy as jnp

    from kernels.int4 import reference_jax

    c = np.float32(15.0 if asym else 7.0)
    rng = np.random.default_rng(21)
    r = rng.uniform(0.01, 4.0, 200_000).astype(np.float32)
    exact, recip = (r / c).astype(np.float16), (r * (np.float32(1.0) / c)).astype(np.float16)
    hard = r[exact != recip][:32]
    assert len(hard) >= 8
    g = 16
    w = rng.uniform(0.0, 1.0, (len(hard), g)).astype(np.float32) * hard[:, None]
    w[:, 3] = hard  # the group's max (and, asymmetric, its range: min clamps to 0)
    wt = torch.tensor(w)
    q_ref, s_ref, z_ref = spec_rtn(wt, g, asym)
    packed, scales, _ = ref_torch.quantize_int4(wt, g, asymmetric=asym)
    assert torch.equal(scales.double(), s_ref) and torch.equal(ref_torch.unpack_int4(packed).double(), q_ref)
    pj, sj, zj = reference_jax.quantize_int4(jnp.asarray(w), g, asymmetric=asym)
    np.testing.assert_array_equal(np.asarray(sj, np.float64), s_ref.numpy())
    np.testing.assert_array_equal(np.asarray(pj), packed.numpy())


def test_symmetric_codes_reach_minus_8_and_pack_low_nibble_first():
    """Mutation R9 (symmetric clamp at -7): the spec's symmetric code range is [-8, 7] + 8, so a
    value at or below -7.5 steps (which GPTQ's error feedback produces) is code 0, not 1. And
    the packing puts the even input index in the low nibble, for every code pair."""
    s = torch.tensor([0.25])
    w = torch.tensor([-9.0, -8.0, -7.6, -7.4, 0.0, 6.6, 7.0, 9.0]) * 0.25
    assert ref_torch.quantize_codes(w, s, None).tolist() == [0, 0, 0, 1, 8, 15, 15, 15]
    codes = torch.tensor([[a, b] for a in range(16) for b in range(16)], dtype=torch.uint8).reshape(1, -1)
    packed = ref_torch.pack_int4(codes)
    assert packed.tolist() == [[a | b << 4 for a in range(16) for b in range(16)]]
    assert torch.equal(ref_torch.unpack_int4(packed), codes)


# --- the references and the Triton split-K scale rows --------------------------------------

def test_jax_reference_matches_float64_with_fractional_zero_points():
    """Mutations J3 (JAX unpack: high nibble first) and J4 (JAX dequantize rounds the zero
    points): the JAX reference int4_matmul -- the baseline the Pallas tests compare against,
    and what a JAX model with impl="reference" runs -- matches the float64 truth within the
    fp32 tolerance of the torch reference doing the same math, for integer and fractional zero
    points and symmetric codes."""
    import jax.numpy as jnp

    from conftest import assert_close
    from kernels import jax_ops

    gen = torch.Generator().manual_seed(22)
    packed = torch.randint(0, 256, (24, 64), generator=gen, dtype=torch.uint8)  # codes the quantizer did not pick
    scales = (torch.rand(4, 24, generator=gen) * 0.1 + 0.01).to(torch.float16)
    x = torch.randn(3, 128, generator=gen)
    for zeros in (None, torch.randint(0, 16, (4, 24), generator=gen).to(torch.float16),
                  (torch.rand(4, 24, generator=gen) * 15).to(torch.float16)):
        # float64 truth straight from the spec: byte j of row n = q[n, 2j] | q[n, 2j + 1] << 4
        q = torch.stack((packed & 0xF, packed >> 4), -1).reshape(24, 128).double()
        z = 8.0 if zeros is None else zeros.double().t().repeat_interleave(32, 1)
        truth = x.double() @ ((q - z) * scales.double().t().repeat_interleave(32, 1)).T
        base = torch_ops.int4_matmul(x, packed, scales, zeros, 32, impl="reference")
        got = jax_ops.int4_matmul(jnp.asarray(x.numpy()), jnp.asarray(packed.numpy()),
                                  jnp.asarray(scales.numpy()), None if zeros is None else jnp.asarray(zeros.numpy()),
                                  32, impl="reference")
        assert_close(np.asarray(got, np.float64), truth, base, torch.float32,
                     what=f"jax reference, zeros {'none' if zeros is None else 'given'}")


def test_split_k_scale_rows_cover_a_split_starting_late_in_a_group():
    """Mutation T7 (preloaded scale rows counted as cdiv(per, group), ignoring where a split
    starts): with BLOCK_K 32 < group 128 (the fp32 GPU default) and 7 K steps a split, the
    second split starts 96 columns into a group and touches 3 groups; PRELOAD_GROUPS must hold
    them, and the kernel's result must match float64."""
    from conftest import assert_close
    from kernels.int4.triton_int4 import Int4Blocks, int4_matmul_triton, preload_groups, split_plan

    blocks = Int4Blocks(16, 16, 32, 4, 4, 1)
    split, per = split_plan(1, 16, 896, 32, blocks, 4)
    assert (split, per) == (4, 224)
    touched = max(len({c // 128 for c in range(s * per, min((s + 1) * per, 896))}) for s in range(split))
    assert touched == 3 and preload_groups(per, 32, 128, split, blocks) >= 3
    gen = torch.Generator().manual_seed(23)
    w = torch.randn(16, 896, generator=gen)
    packed, scales, zeros = ref_torch.quantize_int4(w, 128, asymmetric=True)
    x = torch.randn(1, 896, generator=gen)
    truth = ref_torch.int4_matmul_reference(x.double(), packed, scales, zeros, 128)
    base = ref_torch.int4_matmul_reference(x, packed, scales, zeros, 128)
    y = int4_matmul_triton(x, packed, scales, zeros, 128, blocks=blocks)
    assert_close(y, truth, base, torch.float32, what="triton split-K, split starting late in a group")


# --- the int8 embedding and its head ----------------------------------------------------------

def test_int8_embedding_rows_round_to_nearest_with_zero_rows():
    """Mutation Q1 (row scale from max instead of max |w|): the --int8-embed table holds each
    row within half its step (the float64 check of the spec: scale = max |row| / 127), an
    all-zero row (a padding token) embeds to exact zeros, all finite."""
    gen = torch.Generator().manual_seed(12)
    emb = torch.randn(40, 32, generator=gen) * 0.1
    emb[3] = 0.0  # padding row
    emb[5] = -emb[5].abs() - 0.01  # all negative row
    out = mq.quantize_state_dict({mq.EMBED: emb}, int8_embed=True)
    qw, sc = out[mq.EMBED + ".qweight"], out[mq.EMBED + ".scales"]
    assert qw.dtype == torch.int8 and sc.dtype == torch.float16 and torch.isfinite(sc.float()).all()
    want_scale = (emb.double().abs().amax(1) / 127.0).to(torch.float16).double()
    nz = want_scale > 0
    assert torch.equal(sc.double()[nz], want_scale[nz])
    table = mq.QuantizedEmbedding(qw, sc, None, 128, "int8")
    rows = table.embed(torch.arange(40)).double()
    assert torch.isfinite(rows).all() and torch.all(rows[3] == 0)
    step = sc.double()[:, None]
    assert torch.all((rows - emb.double()).abs() <= 0.5 * step * (1 + 1e-3) + 1e-12)


def test_int8_head_over_several_vocab_chunks(monkeypatch):
    """Mutation Q3 (every chunk of the int8 head scaled by the first chunk's row scales): with
    HEAD_CHUNK smaller than the vocabulary, the tied head x @ (q * s).T matches float64, in
    torch and JAX."""
    import jax.numpy as jnp

    monkeypatch.setattr(mq, "HEAD_CHUNK", 16)
    gen = torch.Generator().manual_seed(13)
    qw = torch.randint(-127, 128, (56, 32), generator=gen, dtype=torch.int8)
    sc = (torch.rand(56, generator=gen) * 0.01 + 1e-3).to(torch.float16)
    x = torch.randn(3, 32, generator=gen)
    truth = x.double() @ (qw.double() * sc.double()[:, None]).T
    from conftest import assert_close

    got = mq.QuantizedEmbedding(qw, sc, None, 128, "int8").linear(x)
    base = x @ (qw.float() * sc.float()[:, None]).T  # the same math in fp32
    assert_close(got, truth, base, torch.float32, what="int8 head, torch")
    qj = mq.QuantizedEmbeddingJax(jnp.asarray(qw.numpy()), jnp.asarray(sc.numpy()), None, 128, "int8")
    assert_close(np.asarray(qj.linear(jnp.asarray(x.numpy())), np.float64), truth, base, torch.float32,
                 what="int8 head, jax")


def test_quantize_helpers_keep_the_asymmetric_scheme():
    """Mutations Q4 / Q5: QuantizedWeight.quantize and quantize_jax_params honour asymmetric=True
    (zero points per group, the codes of quantize_int4), not silently symmetric."""
    import jax.numpy as jnp

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(14)) + 0.3
    want = ref_torch.quantize_int4(w, 32, asymmetric=True)
    qw = mq.QuantizedWeight.quantize(w, 32, asymmetric=True, impl="reference")
    assert qw.zeros is not None
    assert all(torch.equal(a, b) for a, b in zip((qw.qweight, qw.scales, qw.zeros), want))
    name = "model.layers.0.mlp.up_proj.weight"
    qj = mq.quantize_jax_params({name: jnp.asarray(w.numpy())}, 32, asymmetric=True, impl="reference")[name]
    assert qj.zeros is not None
    np.testing.assert_array_equal(np.asarray(qj.qweight), want[0].numpy())
    np.testing.assert_array_equal(np.asarray(qj.zeros, np.float32), want[2].float().numpy())


# --- checkpoints ---------------------------------------------------------------------------

def _small_ckpt(tmp_path, edit=None):
    from safetensors.torch import save_file

    from model.torch_model import GeminiModel

    state = {k: v.detach().contiguous() for k, v in GeminiModel(SMALL, seed=0).state_dict().items()}
    if edit:
        edit(state)
    src = tmp_path / "f.safetensors"
    save_file(state, str(src), metadata={"config": json.dumps(SMALL.to_dict())})
    return src


def test_quantized_norm_tensor_must_be_float():
    """Mutation Q6: a quantized file whose norm weight is an integer tensor is refused by name."""
    q = dict(format=mq.FORMAT, group_size=16, scheme="symmetric")
    tensors = mq.quantize_state_dict({"model.layers.0.mlp.up_proj.weight": torch.randn(8, 32),
                                      "model.norm.weight": torch.zeros(8)}, group_size=16)
    mq.check_quantized_tensors(tensors, q, path="f.safetensors")
    tensors["model.norm.weight"] = torch.zeros(8, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"f.safetensors: tensor 'model.norm.weight' must be a float \[8\]"):
        mq.check_quantized_tensors(tensors, q, path="f.safetensors")


def test_quantize_checkpoint_writes_atomically(tmp_path, monkeypatch):
    """Mutation Q7 (a plain write): the output is written to a temporary file and renamed; a
    failure before the rename leaves the previous file intact and no temporary behind."""
    src = _small_ckpt(tmp_path)
    dst = tmp_path / "out" / "q.safetensors"
    dst.parent.mkdir()
    dst.write_bytes(b"previous")

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        mq.quantize_checkpoint(src, dst, group_size=16)
    assert dst.read_bytes() == b"previous" and [p.name for p in dst.parent.iterdir()] == ["q.safetensors"]
    monkeypatch.undo()
    mq.quantize_checkpoint(src, dst, group_size=16)
    assert mq.is_quantized(dst)


def test_quantize_checkpoint_refuses_a_transposed_projection(tmp_path):
    """Mutation Q8: a projection stored [in, out] (a JAX-layout export) against the config's
    [out, in] is refused by name before anything is written, not quantized along the wrong axis."""
    name = "model.layers.1.mlp.down_proj.weight"  # [32, 64] in the config
    src = _small_ckpt(tmp_path, lambda s: s.update({name: s[name].t().contiguous()}))
    dst = tmp_path / "q.safetensors"
    with pytest.raises(ValueError, match=rf"parameter '{re.escape(name)}' \(64, 32\) does not match"):
        mq.quantize_checkpoint(src, dst, group_size=16)
    assert not dst.exists()


# --- GPTQ ----------------------------------------------------------------------------------

@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
@pytest.mark.parametrize("group", [32, 128], ids=["g32", "g128-spans-blocks"])
def test_gptq_matches_a_float64_column_by_column_reference(asym, group):
    """Mutations G2-G6, G13 (error scaling, lazy update dropped, a group's scale from the stale
    or truncated columns, groups restarted at block starts, blocks skipped): gptq_quantize with
    blocksize 64 equals the textbook float64 GPTQ (same codes, scales and zeros up to float32
    rounding), including groups of 128 that span two lazy blocks."""
    from model.gptq import gptq_quantize

    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(15))
    h = correlated_hessian(512, 128, seed=16)
    q_ref, s_ref, z_ref = spec_gptq(w, h, group, asym)
    packed, scales, zeros = gptq_quantize(w, h, group, asymmetric=asym, blocksize=64)
    codes = ref_torch.unpack_int4(packed).double()
    assert (codes == q_ref).double().mean() >= 0.99
    assert ((scales.double() - s_ref).abs() <= 2e-3 * s_ref).double().mean() >= 0.99
    if asym:
        assert (zeros.double() == z_ref).double().mean() >= 0.99
    # and it is worth it: the output error is below round-to-nearest's
    from model.gptq import output_error

    rtn = ref_torch.dequantize_int4(*ref_torch.quantize_int4(w, group, asymmetric=asym), group, torch.float64)
    gq = ref_torch.dequantize_int4(packed, scales, zeros, group, torch.float64)
    assert output_error(w, gq, h) < 0.8 * output_error(w, rtn, h)


def test_gptq_damping_is_relative_to_the_hessian():
    """Mutation G1 (absolute damping): H = 2 X^T X / n scaled by any c > 0 describes the same
    problem (inputs scaled by sqrt(c)); the damping percdamp * mean(diag H) scales with it, so
    the codes are the same. An absolute damping drowns a small H and returns round-to-nearest."""
    from model.gptq import gptq_quantize

    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(17))
    h = correlated_hessian(512, 128, seed=18)
    a = ref_torch.unpack_int4(gptq_quantize(w, h, 32)[0])
    b = ref_torch.unpack_int4(gptq_quantize(w, h * 1e-6, 32)[0])
    assert (a == b).double().mean() >= 0.99


def test_gptq_refuses_negative_damping():
    """Mutation G9: a negative percdamp is refused by name."""
    from model.gptq import gptq_quantize

    with pytest.raises(ValueError, match="percdamp must be >= 0, got -0.5"):
        gptq_quantize(torch.randn(8, 32), torch.eye(32), 16, percdamp=-0.5)


def test_gptq_model_calibrates_sequentially_on_every_batch():
    """Mutations G7 (only the last batch's X^T X kept) and G8 (later blocks calibrated on the
    embeddings, not on the outputs of the blocks quantized before): each projection of the
    returned model is gptq_quantize of its float weight with H = 2 X^T X / n over the inputs
    it receives, in every calibration batch, inside the final quantized model (every
    projection upstream of it quantized)."""
    from model.gptq import gptq_quantize, gptq_torch_model
    from model.torch_model import GeminiModel

    model = GeminiModel(SMALL, KernelConfig("reference"), seed=3).eval()
    floats = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(19)
    tokens = [torch.randint(0, SMALL.vocab_size, (2, 12), generator=gen) for _ in range(2)]
    qm, report = gptq_torch_model(copy.deepcopy(model), tokens, 16, impl="reference")
    stats, hooks = {}, []
    for name, m in qm.named_modules():
        if isinstance(getattr(m, "weight", None), mq.QuantizedWeight):
            def hook(mod, inputs, output, name=name):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
                xtx, n = stats.get(name, (0.0, 0))
                stats[name] = (xtx + x.T @ x, n + x.shape[0])
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for t in tokens:
            qm(t)
    for hk in hooks:
        hk.remove()
    assert len(stats) == 7 * SMALL.layers == len(report)
    for name, (xtx, n) in stats.items():
        assert n == sum(t.numel() for t in tokens)
        got = qm.get_submodule(name).weight
        want = gptq_quantize(floats[name + ".weight"], 2.0 * xtx / n, 16)
        codes = ref_torch.unpack_int4(got.qweight)
        assert (codes == ref_torch.unpack_int4(want[0])).double().mean() >= 0.99, name
        torch.testing.assert_close(got.scales, want[1], rtol=2e-3, atol=0, msg=name)


def test_quant_eval_reports_kl_of_float_to_int4_and_the_drop_sign(tmp_path, monkeypatch):
    """Mutations E1 (accuracy drop as int4 - float) and E2 (KL(int4 || float)): model.quant_eval's
    record for a checkpoint equals an independent float64 evaluation of the same held-out
    batches, KL(softmax(float) || softmax(int4)) per target position (the mean over batches of
    each batch's mean); the drop is float accuracy minus int4 accuracy, in points (an untrained
    model scores 0 either way, so the evaluation's accuracies are set to 0.75 and 0.5)."""
    from model import quant_eval
    from model.checkpoint import save_checkpoint
    from model.data import make_source
    from model.torch_model import GeminiModel

    cfg = ModelConfig(name="qe", vocab_size=288, width=32, layers=1, heads=2, kv_heads=1, head_dim=16,
                      mlp_dim=64, max_seq_len=32)
    float_model = GeminiModel(cfg, KernelConfig("reference"), seed=4).eval()
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(str(ckpt), float_model, cfg)
    data = {"kind": "retrieval", "retrieval": {"pairs": 4, "key_len": 1, "value_len": 1, "queries": 2, "seq_len": 24}}
    (tmp_path / "state.json").write_text(json.dumps({"config": {"seed": 0, "batch_size": 4, "data": data}}))
    real, accuracies = quant_eval.evaluate, iter([0.75, 0.5])
    monkeypatch.setattr(quant_eval, "evaluate", lambda *a, **k: {**real(*a, **k), "accuracy": next(accuracies)})
    res = quant_eval.run(str(tmp_path / "state.json"), str(ckpt), group_size=16, batches=2)
    assert (res["float"]["accuracy"], res["int4"]["accuracy"]) == (0.75, 0.5)
    assert res["accuracy_drop_points"] == pytest.approx(25.0)
    qpath = mq.quantize_checkpoint(ckpt, tmp_path / "q.safetensors", group_size=16)
    qmodel = mq.load_quantized_torch(str(qpath), KernelConfig("reference"), impl="reference").eval()
    source = make_source("retrieval", seed=0, retrieval=data["retrieval"], text={})
    kls = []
    with torch.no_grad():
        for i in range(2):
            b = source.batch("eval", i, 4)
            tokens, mask = torch.as_tensor(b.inputs).long(), torch.as_tensor(b.mask).bool()
            lp = torch.log_softmax(float_model(tokens).double(), -1)[mask]
            lq = torch.log_softmax(qmodel(tokens).double(), -1)[mask]
            kls.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
    assert res["logits_kl_nats"] == pytest.approx(float(np.mean(kls)), rel=1e-6)
