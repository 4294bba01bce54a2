"""rms_norm / layer_norm (kernels/norms) vs a float64 reference, forward and backward.

Triton runs in the interpreter on CPU (fp32, fp16, bf16: no tl.dot, so bf16 is exact there);
Pallas in interpret mode (fp32, bf16). Bound (conftest.assert_close): 2x the error of the
framework doing the same math in the input dtype, plus the dtype floor. Odd shapes: 39 rows
(not a block multiple), hidden 1152, 2048 and 100 (masked columns); past 8192 columns the
column-blocked Triton backward (8200: a partial last column chunk; 10240: a row-group loop).
NaN / inf: confined to their own rows in both kernels (the policy in spec.py). eps: zero,
constant and tiny rows, where dropping it gives NaN or a wrong scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.norms import reference, reference_jax, triton_norms
from kernels.norms.pallas_norms import PallasNormBlocks
from kernels.norms.triton_norms import NormBlocks

from conftest import assert_close, rounded


@dataclass(frozen=True)
class Case:
    rms: bool
    hidden: int
    residual: bool
    gemma: bool = False
    lead: tuple = (3, 13)
    triton_blocks: NormBlocks | None = None

    @property
    def id(self):
        return (f"{'rms' if self.rms else 'layer'}{'-gemma' if self.gemma else ''}"
                f"{'-res' if self.residual else ''}-{'x'.join(map(str, self.lead))}x{self.hidden}")


CASES = [
    Case(True, 1152, residual=True, gemma=True),
    Case(True, 100, residual=False, triton_blocks=NormBlocks(block_m=4, bwd_programs=3, bwd_stages=3)),
    Case(False, 2048, residual=True, lead=(39,)),
    Case(False, 100, residual=False, lead=(2, 3, 5), triton_blocks=NormBlocks(block_m=8, bwd_programs=2)),
]


def _inputs(rng, c: Case):
    shape = (*c.lead, c.hidden)
    arrays = dict(x=rng.standard_normal(shape) * 2 + 0.5, w=rng.standard_normal(c.hidden),
                  b=rng.standard_normal(c.hidden) if not c.rms else None,
                  r=rng.standard_normal(shape) if c.residual else None)
    cots = [rng.standard_normal(shape)] + ([rng.standard_normal(shape)] if c.residual else [])
    return arrays, cots


def _kwargs(c: Case):
    return dict(rms=c.rms, eps=1e-6 if c.rms else 1e-5, offset=1.0 if c.gemma else 0.0)


def _torch_run(fn, arrays, cots, dtype, device="cpu"):
    """outputs and gradients of fn(x, w, b, r) on tensors of ``dtype`` on ``device``."""
    ts = {k: None if v is None else torch.tensor(v).to(device, dtype).requires_grad_() for k, v in arrays.items()}
    out = fn(ts["x"], ts["w"], ts["b"], ts["r"])
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, [torch.tensor(g).to(device, o.dtype) for g, o in zip(cots, outs)])
    grads = [ts[k].grad for k in ("x", "w", "b", "r") if ts[k] is not None]
    return [o.detach() for o in outs] + grads


def _names(c: Case):
    return ["y"] + (["h"] if c.residual else []) + ["dx", "dweight"] + \
        ([] if c.rms else ["dbias"]) + (["dresidual"] if c.residual else [])


# hidden > WHOLE_ROW_BWD_MAX: the column-blocked backward (two kernels)
WIDE_CASES = [
    Case(True, 8200, residual=True, gemma=True, lead=(3,)),
    Case(False, 10240, residual=True, lead=(5,),
         triton_blocks=NormBlocks(bwd_programs=2, bwd_block_m=2, bwd_block_n=2048)),
    Case(False, 9001, residual=False, lead=(2, 3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_triton_matches_float64(rng, case, dtype):
    _check_triton(rng, case, dtype, {"_norm_fwd_kernel": 1, "_norm_bwd_kernel": 1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", WIDE_CASES, ids=lambda c: c.id)
def test_triton_wide_rows_match_float64(rng, case, dtype):
    assert case.hidden > triton_norms.WHOLE_ROW_BWD_MAX
    _check_triton(rng, case, dtype, {"_norm_fwd_kernel": 1, "_norm_bwd_row_sums_kernel": 1,
                                     "_norm_bwd_col_block_kernel": 1})


def _check_triton(rng, case, dtype, launches):
    arrays, cots = _inputs(rng, case)
    kw = _kwargs(case)
    arrays = {k: None if v is None else rounded(v, dtype) for k, v in arrays.items()}
    triton_norms.LAUNCHES.clear()
    got = _torch_run(lambda x, w, b, r: triton_norms.norm_triton(x, w, b, r, **kw, blocks=case.triton_blocks),
                     arrays, cots, dtype)
    assert triton_norms.LAUNCHES == launches
    _assert_torch_matches(got, arrays, cots, case, dtype)


def _truth(arrays, cots, case):
    kw = _kwargs(case)
    return _torch_run(lambda x, w, b, r: reference._norm(x, w, b, r, **kw), arrays, cots, torch.float64)


def _assert_torch_matches(got, arrays, cots, case, dtype, device="cpu"):
    """got (outputs, then grads) vs float64 on the CPU; baseline: torch in dtype on ``device``."""
    kw = _kwargs(case)
    base = _torch_run(lambda x, w, b, r: reference._norm(x, w, b, r, **kw, upcast=False), arrays, cots,
                      dtype, device)
    for name, g, r, bl in zip(_names(case), got, _truth(arrays, cots, case), base):
        assert g.dtype == dtype, (name, g.dtype)
        assert_close(g, r, bl, dtype, name)


def _jax_run(fn, arrays, cots, dtype):
    keys = [k for k in ("x", "w", "b", "r") if arrays[k] is not None]

    def f(*vals):
        d = dict(zip(keys, vals))
        return fn(d["x"], d["w"], d.get("b"), d.get("r"))

    vals = [jnp.asarray(arrays[k]).astype(dtype) for k in keys]
    out, vjp = jax.vjp(f, *vals)
    outs = out if isinstance(out, tuple) else (out,)
    ct = tuple(jnp.asarray(g).astype(dtype) for g in cots)
    grads = vjp(ct if isinstance(out, tuple) else ct[0])
    return list(outs) + list(grads)


PALLAS_CASES = [(CASES[0], jnp.float32, None), (CASES[3], jnp.bfloat16, PallasNormBlocks(block_m=4, bwd_programs=3)),
                # the ViT's fused ln2 (layer_norm + residual) at 39 rows; rms_norm without residual
                (CASES[2], jnp.float32, None),
                (Case(False, 1152, residual=True, lead=(39,)), jnp.bfloat16,
                 PallasNormBlocks(block_m=8, bwd_programs=3)),
                (Case(True, 1152, residual=False, lead=(39,)), jnp.float32, None)]


@pytest.mark.parametrize("case,dtype,blocks", PALLAS_CASES,
                         ids=[f"{c.id}-{jnp.dtype(d).name}" for c, d, _ in PALLAS_CASES])
def test_pallas_matches_float64(rng, case, dtype, blocks):
    from kernels.norms.pallas_norms import norm_pallas

    arrays, cots = _inputs(rng, case)
    tdt = torch.float32 if dtype == jnp.float32 else torch.bfloat16
    arrays = {k: None if v is None else rounded(v, tdt) for k, v in arrays.items()}
    kw = _kwargs(case)
    got = _jax_run(lambda x, w, b, r: norm_pallas(x, w, b, r, **kw, blocks=blocks), arrays, cots, dtype)
    _assert_jax_matches(got, arrays, cots, case, dtype)


def _assert_jax_matches(got, arrays, cots, case, dtype):
    """got (outputs, then grads) vs float64 on the CPU; baseline: jnp in dtype (default device)."""
    kw = _kwargs(case)
    base = _jax_run(lambda x, w, b, r: reference_jax._norm(x, w, b, r, **kw, upcast=False), arrays, cots, dtype)
    for name, g, r, bl in zip(_names(case), got, _truth(arrays, cots, case), base):
        assert g.dtype == dtype, (name, g.dtype)
        assert_close(np.asarray(g.astype(jnp.float32)), r, np.asarray(bl.astype(jnp.float32)),
                     jnp.dtype(dtype).name, name)


def _eps_rows(rng, residual):
    """Rows where eps matters: all zero, constant, and tiny (mean square 1e-6 and ~1e-8, at or
    under eps). With a residual, x and r are halves of those rows (h = x + r exactly)."""
    hidden = 100
    rows = np.stack([np.zeros(hidden), np.full(hidden, 3.0), 1e-3 * rng.standard_normal(hidden),
                     1e-4 * (rng.standard_normal(hidden) + 1.0)])
    rows = rounded(rows, torch.float32)
    arrays = dict(x=rows / 2 if residual else rows, r=rows / 2 if residual else None)
    cots = [rng.standard_normal(rows.shape) for _ in range(1 + residual)]
    return arrays, cots


@pytest.mark.parametrize("framework", ["triton", "pallas"])
@pytest.mark.parametrize("rms,residual", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["rms-res", "rms", "layer-res", "layer"])
def test_eps_rows_match_float64(rng, rms, residual, framework):
    """Zero, constant and tiny rows (fp32): finite and float64-close only if eps is added to
    the mean square / variance (the random rows elsewhere have variance ~4, far above eps)."""
    from kernels.norms.pallas_norms import norm_pallas

    case = Case(rms, 100, residual, lead=(4,))
    arrays, cots = _eps_rows(rng, residual)
    arrays.update(w=rounded(rng.standard_normal(100), torch.float32),
                  b=None if rms else rounded(rng.standard_normal(100), torch.float32))
    kw = _kwargs(case)
    if framework == "triton":
        got = _torch_run(lambda x, w, b, r: triton_norms.norm_triton(x, w, b, r, **kw), arrays, cots,
                         torch.float32)
        _assert_torch_matches(got, arrays, cots, case, torch.float32)
    else:
        got = _jax_run(lambda x, w, b, r: norm_pallas(x, w, b, r, **kw), arrays, cots, jnp.float32)
        _assert_jax_matches(got, arrays, cots, case, jnp.float32)


@pytest.mark.parametrize("rms,residual", [(True, True), (False, False)], ids=["rms-res", "layer"])
def test_nan_inf_confined_to_their_rows(rng, rms, residual):
    """spec.py: a NaN / inf in x (or residual) makes its own row of y, h and dx non-finite;
    every other row equals the all-finite run exactly, in both kernels (dweight / dbias sum
    over rows, so they are non-finite)."""
    from kernels.norms.pallas_norms import norm_pallas

    shape, hidden = (9, 100), 100
    x, r = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    cots = [rng.standard_normal(shape).astype(np.float32) for _ in range(1 + residual)]
    bad = x.copy()
    bad[2, 7], bad[6, 99] = np.nan, -np.inf
    rows = np.zeros(shape[0], bool)
    rows[[2, 6]] = True
    kw = dict(rms=rms, eps=1e-6, offset=0.0)

    def arrays(xv):
        return dict(x=xv, w=w, b=None if rms else b, r=r if residual else None)

    def triton(xv):
        out = _torch_run(lambda x_, w_, b_, r_: triton_norms.norm_triton(
            x_, w_, b_, r_, **kw, blocks=NormBlocks(block_m=4, bwd_programs=2)), arrays(xv), cots, torch.float32)
        return [t.numpy() for t in out]

    def pallas(xv):
        out = _jax_run(lambda x_, w_, b_, r_: norm_pallas(
            x_, w_, b_, r_, **kw, blocks=PallasNormBlocks(block_m=4, bwd_programs=2)), arrays(xv), cots, jnp.float32)
        return [np.asarray(t) for t in out]

    n_out = 1 + residual
    for name, run in (("triton", triton), ("pallas", pallas)):
        ok, got = run(x), run(bad)
        names = _names(Case(rms, hidden, residual))
        for i, (what, g, want) in enumerate(zip(names, got, ok)):
            if what in ("dweight", "dbias"):
                continue
            assert not np.isfinite(g[rows]).all(axis=1).any(), f"{name} {what}: a poisoned row came out finite"
            np.testing.assert_array_equal(g[~rows], want[~rows], err_msg=f"{name} {what} outside the rows")
        assert i + 1 == len(names) and len(got) == n_out + 2 + (not rms) + residual


def test_public_api_dispatch_and_gemma_offset(rng):
    x = torch.tensor(rng.standard_normal((5, 64)), dtype=torch.float32)
    w = torch.tensor(rng.standard_normal(64), dtype=torch.float32)
    ref = torch_ops.rms_norm(x, w, gemma=True, impl="reference")
    assert torch.allclose(torch_ops.rms_norm(x, w, offset=1.0, impl="triton"), ref, atol=1e-5)
    manual = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * (1 + w)
    assert torch.allclose(ref, manual, atol=1e-5)
    y, h = jax_ops.layer_norm(jnp.asarray(x.numpy()), jnp.asarray(w.numpy()), jnp.zeros(64),
                              residual=jnp.ones((5, 64)), impl="xla")
    np.testing.assert_allclose(np.asarray(h), x.numpy() + 1, rtol=1e-6)
    assert y.shape == (5, 64)


BAD = [
    (lambda x, w: dict(x=x, weight=w[:-1]), ValueError, r"weight must have shape \(64,\).*got \(63,\)"),
    (lambda x, w: dict(x=x, weight=w, eps=0.0), ValueError, r"eps must be > 0, got 0.0"),
    (lambda x, w: dict(x=x, weight=w, gemma=True, offset=0.5), ValueError, r"either gemma=True or offset"),
    (lambda x, w: dict(x=x, weight=w, residual=x[:1]), ValueError, r"residual must have x's shape"),
    (lambda x, w: dict(x=x.double(), weight=w), TypeError, r"x dtype must be one of .*got torch.float64"),
    (lambda x, w: dict(x=x, weight=w, residual=x.half()), TypeError, r"residual dtype must equal x dtype"),
    (lambda x, w: dict(x=x, weight=w, impl="cuda"), ValueError, r"impl must be one of .*got 'cuda'"),
    (lambda x, w: dict(x=x[:, :0], weight=w[:0]), ValueError, r"x must have >= 1 dims, all >= 1"),
    (lambda x, w: dict(x=x.numpy(), weight=w), TypeError, r"x must be an array or tensor|x dtype"),
]


@pytest.mark.parametrize("make,exc,msg", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_inputs_raise_before_launch(make, exc, msg):
    x, w = torch.zeros(4, 64), torch.ones(64)
    triton_norms.LAUNCHES.clear()
    with pytest.raises(exc, match=msg):
        torch_ops.rms_norm(**make(x, w))
    assert not triton_norms.LAUNCHES


def test_bad_inputs_jax_and_layer_norm():
    x, w = jnp.zeros((4, 64)), jnp.ones(64)
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\) .*got \(3,\)"):
        jax_ops.layer_norm(x, w, jnp.ones(3))
    with pytest.raises(TypeError, match=r"bias must be an array or tensor, got NoneType"):
        jax_ops.layer_norm(x, w, None)
    with pytest.raises(ValueError, match=r"hidden size .* must be <= 16384, got 16385"):
        jax_ops.rms_norm(jnp.zeros((1, 16385)), jnp.ones(16385))
    with pytest.raises(ValueError, match=r"block_m=3 must be a power of two"):
        NormBlocks(block_m=3)
    with pytest.raises(ValueError, match=r"bwd_block_n=16384 must be a power of two in \[1, 8192\]"):
        NormBlocks(bwd_block_n=16384)
    with pytest.raises(ValueError, match=r"bwd_stages=5 must be 1, 2, 3 or 4"):
        NormBlocks(bwd_stages=5)
    # GPU defaults: the backward's cp.async stages within ~48 KiB beyond the first
    from kernels.norms.triton_norms import default_blocks

    stages = {(h, str(dt)): default_blocks(h, dt, capability=(9, 0)).bwd_stages
              for h in (2048, 4096, 8192) for dt in (torch.bfloat16, torch.float32)}
    assert stages == {(2048, "torch.bfloat16"): 3, (2048, "torch.float32"): 2, (4096, "torch.bfloat16"): 3,
                      (4096, "torch.float32"): 2, (8192, "torch.bfloat16"): 2, (8192, "torch.float32"): 1}
    with pytest.raises(ValueError, match=r"block_m must be a power of two"):
        PallasNormBlocks(block_m=0)
