"""Mutation round 5C: backward passes of the small kernels and the cross-entropy paths.

Each test names the mutation it catches (the audit's ``muts-C.json``). Truth: float64 torch
references on the same rounded inputs; bound: conftest.assert_close (2x the same-precision
framework error + the dtype floor of kernels/tolerances.py). Triton in the interpreter runs
fp32 / fp16 only where a tl.dot is involved (the interpreter's bf16 dot is wrong).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.cross_entropy import reference as ce_reference
from kernels.cross_entropy import triton_cross_entropy
from kernels.norms import reference as norm_reference
from kernels.norms import triton_norms
from kernels.patch_embed import triton_patch_embed
from kernels.patch_embed.reference import patch_embed_reference

from conftest import assert_close, rounded

# ---- cross-entropy ---------------------------------------------------------------------------


def _ce_data(rng, lead, vocab=37, width=16):
    x = rng.standard_normal((*lead, width))
    w = rng.standard_normal((vocab, width)) / (width / 10) ** 0.5
    t = rng.integers(0, vocab, lead)
    return x, w, t


def test_torch_cross_entropy_all_rows_masked_is_zero(rng):
    """ce_to_denom_clamp (kernels/torch_ops.py: the default normalizer ``m.sum().clamp_min(1)``
    without the clamp): a batch whose rows are all masked out (spec.py: normalizer = masked
    row count, at least 1) has loss 0 and zero gradients, not 0 / 0 = NaN; triton == reference."""
    x, w, t = _ce_data(rng, (2, 3))
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for impl in ("triton", "reference"):
        xx, ww = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, w))
        loss = torch_ops.linear_cross_entropy(xx, ww, torch.tensor(t), mask=mask, impl=impl)
        loss.backward()
        assert float(loss.detach()) == 0.0, (impl, float(loss.detach()))
        assert not xx.grad.any() and not ww.grad.any(), impl


def test_jax_cross_entropy_all_rows_masked_is_zero(rng):
    """ce_jo_denom (kernels/jax_ops.py: the default normalizer ``jnp.maximum(m.sum(), 1)``
    without the maximum): all rows masked out gives loss 0 and zero gradients in the chunked
    impls as in the reference, not NaN."""
    x, w, t = _ce_data(rng, (2, 3))
    mask = jnp.zeros((2, 3), bool)
    for impl in jax_ops.LOSS_IMPLS:
        loss, (dx, dw) = jax.value_and_grad(
            lambda a, b: jax_ops.linear_cross_entropy(a, b, jnp.asarray(t), mask=mask, impl=impl),
            argnums=(0, 1))(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
        assert float(loss) == 0.0, (impl, float(loss))
        assert not np.asarray(dx).any() and not np.asarray(dw).any(), impl


def test_triton_cross_entropy_kernel_never_sees_a_masked_rows_target(rng, monkeypatch):
    """ce_t_nomasktarget (triton_cross_entropy.linear_cross_entropy_triton: targets passed on
    unclamped where row_weight == 0): masked-out rows may hold any target (spec.py; -100 is
    the usual ignore index), but the row kernel reads logits[row, target] unmasked, so every
    target it is given must lie in [0, V) -- else it reads outside the row (on a GPU: a
    garbage value, or NaN, times weight 0 is NaN). The loss and gradients match float64."""
    x, w, t = _ce_data(rng, (3, 4))
    mask = rng.random((3, 4)) > 0.4
    mask[0, 0] = False
    t = np.where(mask, t, -100)
    t[0, 1] = 10 ** 6 if not mask[0, 1] else t[0, 1]
    seen = []
    launch = triton_cross_entropy._ce_rows

    def checked(logits, targets, *a):  # before the launch: an out-of-range target reads anywhere
        lo, hi = int(targets.min()), int(targets.max())
        assert 0 <= lo and hi < logits.shape[1], f"the row kernel was given targets in [{lo}, {hi}]"
        seen.append(targets.numel())
        return launch(logits, targets, *a)

    monkeypatch.setattr(triton_cross_entropy, "_ce_rows", checked)
    blocks = triton_cross_entropy.CrossEntropyBlocks(block_v=16, num_warps=4, chunk_rows=5)
    tt = torch.tensor(t)
    row_w = (torch.tensor(mask).float() / max(int(mask.sum()), 1)).reshape(-1)
    xx, ww = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, w))
    loss = triton_cross_entropy.linear_cross_entropy_triton(xx.reshape(-1, 16), ww, tt.reshape(-1), row_w,
                                                            blocks=blocks)
    (1.5 * loss).backward()
    assert sum(seen) == t.size, seen  # every row went through the checked launches
    x64, w64 = (torch.tensor(a, requires_grad=True) for a in (x, w))
    ref = ce_reference._linear_cross_entropy(x64, w64, tt, torch.tensor(mask))
    (1.5 * ref).backward()
    base_x, base_w = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, w))
    base = ce_reference._linear_cross_entropy(base_x, base_w, tt, torch.tensor(mask), upcast=False)
    (1.5 * base).backward()
    for name, g, r, b in (("loss", loss.detach(), ref.detach(), base.detach()), ("dx", xx.grad, x64.grad, base_x.grad),
                          ("dweight", ww.grad, w64.grad, base_w.grad)):
        assert_close(g, r, b, torch.float32, name)


# ---- patch_embed -----------------------------------------------------------------------------


def _pe_arrays(rng, batch, height, width, channels, patch, dim):
    n = (height // patch) * (width // patch)
    k = patch * patch * channels
    shapes = [(batch, height, width, channels), (k, dim), (dim,), (n, dim), (batch, n, dim)]
    return [rng.standard_normal(s) * (k ** -0.5 if i == 1 else 1.0) for i, s in enumerate(shapes)]


def _pe_torch_vjp(fn, arrays, dtype, needs=(True, True, True, True)):
    *inputs, dy = [torch.tensor(a).to(dtype) for a in arrays]
    leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, needs)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach(), *(t.grad for t in leaves)]


def test_triton_patch_embed_dbias_sums_every_dpos_tile(rng):
    """pe_t_dbias_tile0 (triton_patch_embed._backward_params: dbias = the dpos kernel's first
    per-tile partial row instead of the sum of all of them): with more patches than one dpos
    tile (20 patches, block_m 16: two tiles, the second partial) dbias must sum every tile;
    dweight (40 rows, a partial row block) and dimages (K = 196, a partial k block) too."""
    from kernels.patch_embed.triton_patch_embed import PatchEmbedBlocks, patch_embed_triton

    arrays = _pe_arrays(rng, 2, 56, 70, 1, 14, 24)
    blocks = PatchEmbedBlocks(16, 16, 16, 4, 1)
    got = _pe_torch_vjp(lambda *t: patch_embed_triton(*t, patch=14, blocks=blocks), arrays, torch.float32)
    ref = _pe_torch_vjp(lambda *t: patch_embed_reference(*t, patch=14), arrays, torch.float64)
    base = _pe_torch_vjp(lambda *t: patch_embed_reference(*t, patch=14), arrays, torch.float32)
    for name, g, r, b in zip(("tokens", "dimages", "dweight", "dbias", "dpos"), got, ref, base):
        assert_close(g, r, b, torch.float32, name)


@pytest.mark.parametrize("needs", [(False, False, True, True), (False, False, True, False),
                                   (True, False, False, True)], ids=["bias+pos", "bias", "images+pos"])
def test_triton_patch_embed_frozen_weight_still_gives_bias_and_pos_grads(rng, needs):
    """pe_t_needparams (triton_patch_embed._backward: the parameter pass run only when the
    weight needs a gradient): with a frozen weight (fine-tuning bias and position embedding,
    or a frozen patch projection), bias and pos_embed still get their float64-close gradients
    and the frozen ones none."""
    arrays = _pe_arrays(rng, 2, 28, 42, 3, 14, 16)
    got = _pe_torch_vjp(lambda *t: torch_ops.patch_embed(*t, patch=14, impl="triton"), arrays, torch.float32, needs)
    ref = _pe_torch_vjp(lambda *t: patch_embed_reference(*t, patch=14), arrays, torch.float64, needs)
    base = _pe_torch_vjp(lambda *t: patch_embed_reference(*t, patch=14), arrays, torch.float32, needs)
    for name, need, g, r, b in zip(("dimages", "dweight", "dbias", "dpos"), needs, got[1:], ref[1:], base[1:]):
        if not need:
            assert g is None, name
            continue
        assert g is not None, f"{name}: no gradient though it requires one"
        assert_close(g, r, b, torch.float32, name)


def test_pallas_patch_embed_dim_in_several_blocks(rng):
    """pe_p_dx_chunk0, pe_p_dx_nchunks, pe_p_dw_dyblock (pallas_patch_embed._backward: dimages
    reduced over only the first dim chunk, or one chunk; dweight's dY block index fixed at 0):
    with block_d 16 and dim 40 (padded to 48: three dim blocks, the last partial), as on a GPU
    where block_d is 64 and dim 1152, dimages sums every chunk and each dweight block reads
    its own dY columns."""
    from kernels.patch_embed.pallas_patch_embed import PallasPatchBlocks, patch_embed_pallas

    arrays = _pe_arrays(rng, 2, 28, 28, 3, 14, 40)
    blocks = PallasPatchBlocks(block_d=16, num_warps=4, num_stages=1)
    inputs = [jnp.asarray(a, jnp.float32) for a in arrays[:4]]
    y, vjp = jax.vjp(lambda *a: patch_embed_pallas(*a, patch=14, blocks=blocks), *inputs)
    got = [y, *vjp(jnp.asarray(arrays[4], jnp.float32))]
    ref = _pe_torch_vjp(lambda *t: patch_embed_reference(*t, patch=14), arrays, torch.float64)
    base = _pe_torch_vjp(lambda *t: patch_embed_reference(*t, patch=14), arrays, torch.float32)
    for name, g, r, b in zip(("tokens", "dimages", "dweight", "dbias", "dpos"), got, ref, base):
        assert_close(np.asarray(g), r, b, torch.float32, name)


# ---- norms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
@pytest.mark.parametrize("used", ["h", "y"])
def test_triton_norm_gradient_through_one_output(rng, rms, used):
    """nrm_t_dynone (triton_norms._NormFunction.backward: a missing gradient of y taken as ones
    instead of zeros): with a residual the op returns (y, h); a loss that uses only h (the
    stream going on past the last norm) or only y gets exactly the float64 gradients of that
    output alone -- dx = dresidual = dh, dweight = 0 when y is unused."""
    shape, hidden = (13, 100), 100
    x, r = rounded(rng.standard_normal(shape), torch.float32), rounded(rng.standard_normal(shape), torch.float32)
    w, b = rounded(rng.standard_normal(hidden), torch.float32), rounded(rng.standard_normal(hidden), torch.float32)
    cot = rng.standard_normal(shape)
    kw = dict(rms=rms, eps=1e-6, offset=0.0)

    def run(fn, dtype):
        xs, rs, ws = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x, r, w))
        bs = None if rms else torch.tensor(b, dtype=dtype, requires_grad=True)
        y, h = fn(xs, ws, bs, rs)
        ((y if used == "y" else h) * torch.tensor(cot, dtype=dtype)).sum().backward()
        leaves = [xs, rs, ws] + ([] if rms else [bs])
        return [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]

    got = run(lambda *a: triton_norms.norm_triton(*a, **kw, blocks=triton_norms.NormBlocks(block_m=4, bwd_programs=2)),
              torch.float32)
    ref = run(lambda *a: norm_reference._norm(*a, **kw), torch.float64)
    base = run(lambda *a: norm_reference._norm(*a, **kw, upcast=False), torch.float32)
    for name, g, rr, bb in zip(("dx", "dresidual", "dweight", "dbias"), got, ref, base):
        assert_close(g, rr, bb, torch.float32, name)


@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
def test_triton_norm_fp32_weight_with_bf16_activations(rng, rms):
    """nrm_t_dwdtype (triton_norms._norm_bwd: dweight rounded to the activations' dtype, not the
    weight's): spec.py allows fp32 weights with bf16 activations, their gradients "come back
    in it" -- fp32, from fp32 partial sums, so within the fp32 rule of the fp32-math reference
    on the same inputs, not merely bf16-close. No tl.dot in the norms: bf16 is exact in the
    interpreter."""
    shape, hidden = (3, 13, 100), 100
    x = rounded(rng.standard_normal(shape) * 2 + 0.5, torch.bfloat16)
    w, b = rng.standard_normal(hidden), rng.standard_normal(hidden)
    cot = rounded(rng.standard_normal(shape), torch.bfloat16)
    kw = dict(rms=rms, eps=1e-6, offset=0.0)

    def run(fn, xdt, wdt):
        xs = torch.tensor(x, dtype=xdt, requires_grad=True)
        ws = torch.tensor(w, dtype=wdt, requires_grad=True)
        bs = None if rms else torch.tensor(b, dtype=wdt, requires_grad=True)
        fn(xs, ws, bs, None).backward(torch.tensor(cot, dtype=xdt))
        return [ws.grad] + ([] if rms else [bs.grad])

    got = run(lambda *a: triton_norms.norm_triton(*a, **kw, blocks=triton_norms.NormBlocks(block_m=4, bwd_programs=3)),
              torch.bfloat16, torch.float32)
    ref = run(lambda *a: norm_reference._norm(*a, **kw), torch.float64, torch.float64)
    base = run(lambda *a: norm_reference._norm(*a, **kw), torch.bfloat16, torch.float32)
    for name, g, r, bb in zip(("dweight", "dbias"), got, ref, base):
        assert g.dtype == torch.float32, (name, g.dtype)
        assert_close(g, r, bb, torch.float32, name)
