"""Decode and rope cases the neighbouring tests left open (mutation audit, round 4B).

Each test's docstring names the mutation it catches. Tiny shapes (the Pallas ones trace
in interpret mode, the slowest). Decode: a GQA/MQA group wider than the 16-row tile (Triton);
lengths past max_len with the host check off (Triton) or traced under jit (Pallas), which the
kernels must clamp; the Pallas combine over more than 4 splits (more than one chunk).
Rope: a non-contiguous x (q sliced out of a fused qkv projection), forward and backward.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.decode import pallas_decode, triton_decode
from kernels.rope import reference as rope_reference

import test_decode
from conftest import assert_close, rounded


def test_triton_decode_group_wider_than_16_rows(rng):
    """24 query heads on 1 kv head (MQA, G = 24 > 16 and not a power of two): every head of
    the group is computed. Catches BLOCK_H=16 (``triton_decode._constexprs``: the heads past
    the first 16 never computed, their output left as uninitialized partials)."""
    c = test_decode.Case(24, 1, 16, 32, (29,))
    q, k, v, lens = test_decode._inputs(rng, c)
    ts = [torch.tensor(x).float() for x in (q, k, v)]
    out = triton_decode.decode_triton(*ts, torch.tensor(lens), num_splits=1,
                                      blocks=triton_decode.TritonDecodeBlocks(32, 4, 1))
    test_decode._torch_check(out, q, k, v, lens, c, torch.float32)


def test_triton_decode_clamps_unchecked_lengths(rng):
    """check_lengths=False (no host read): a length past max_len is clamped to max_len in the
    kernel (spec.py), never reading past the row -- here into row 1's cache. Catches removing
    the clamp of L in ``_decode_split_kernel`` (``length = tl.load(LENS + off_b)``)."""
    q, k, v = (torch.from_numpy(rng.standard_normal(s)).float() for s in
               ((2, 2, 16), (2, 32, 1, 16), (2, 32, 1, 16)))
    over = torch_ops.decode_attention(q, k, v, torch.tensor([32 + 9, 5]), impl="triton",
                                      check_lengths=False)
    clamped = torch_ops.decode_attention(q, k, v, torch.tensor([32, 5]), impl="triton")
    torch.testing.assert_close(over, clamped, rtol=0, atol=0)


def test_triton_rope_non_contiguous_x(rng):
    """x = q sliced out of a fused [.., 3 * D] qkv projection (not contiguous): rotated as a
    contiguous copy would be, forward and backward. Catches ``xc = x`` in ``triton_rope._launch``
    (the kernel indexing rows of D in a tensor whose rows are 3 * D apart)."""
    qkv = torch.tensor(rounded(rng.standard_normal((1, 5, 2, 3 * 8)), torch.float32))
    pos = torch.tensor(rng.integers(0, 5000, (1, 5)))
    dy = torch.tensor(rng.standard_normal((1, 5, 2, 8)))
    kw = dict(theta=10000.0, sections=1)
    runs = {"triton": (lambda x: torch_ops.rope(x, pos, impl="triton"), torch.float32),
            "ref64": (lambda x: rope_reference._rope(x, pos, **kw), torch.float64),
            "base": (lambda x: rope_reference._rope(x, pos, **kw, upcast=False), torch.float32)}
    out = {}
    for name, (fn, dt) in runs.items():
        leaf = qkv.detach().to(dt).requires_grad_()
        x = leaf[..., :8]
        assert not x.is_contiguous()
        y = fn(x)
        y.backward(dy.to(dt))
        out[name] = (y.detach(), leaf.grad[..., :8])
    for i, what in enumerate(("y", "dx")):
        assert_close(out["triton"][i], out["ref64"][i], out["base"][i], torch.float32, what)


def test_pallas_decode_clamps_traced_lengths(rng):
    """Under jax.jit the lengths are tracers (no host check): a length past max_len is clamped
    to max_len in the kernel (spec.py). Catches removing the clamp of L in
    ``pallas_decode._split_kernel`` (``length = jnp.max(lens_ref[...])``)."""
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in
               ((2, 2, 16), (2, 32, 1, 16), (2, 32, 1, 16)))
    fn = jax.jit(lambda L: jax_ops.decode_attention(q, k, v, L, impl="pallas"))
    over = fn(jnp.asarray([32 + 9, 5], jnp.int32))
    clamped = fn(jnp.asarray([32, 5], jnp.int32))
    np.testing.assert_array_equal(np.asarray(over), np.asarray(clamped))


def test_pallas_decode_combines_more_than_four_splits(rng):
    """8 splits (the GPU default reaches 256): the combine walks the shares 4 at a time, so
    this takes two chunks (every other test has <= 4 splits, one chunk). Catches the combine
    dropping a chunk (``lax.fori_loop(0, max(1, n_s // chunk - 1), ...)`` in
    ``pallas_decode._decode``)."""
    c = test_decode.Case(2, 1, 16, 128, (128,))
    q, k, v, lens = test_decode._inputs(rng, c)
    js = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    o, _, lse = pallas_decode.decode_pallas(*js, jnp.asarray(lens), window=None, softcap=None,
                                            scale=16**-0.5, num_splits=8, return_partials=True,
                                            blocks=pallas_decode.PallasDecodeBlocks(16, 4, 1))
    assert np.isfinite(np.asarray(lse)[0, 0, :, 0]).sum() == 8  # every share used
    test_decode._jax_check(o, q, k, v, lens, c, jnp.dtype(jnp.float32))


NAN_IMPLS = [("torch", "triton"), ("torch", "reference"), ("jax", "pallas"), ("jax", "pallas_tpu"),
             ("jax", "reference")]


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("framework,impl", NAN_IMPLS, ids=[f"{f}-{i}" for f, i in NAN_IMPLS])
def test_unseen_cache_positions_may_hold_nan(framework, impl, paged, rng):
    """Positions t >= L (a torch.empty cache, a reused slot, a page's tail) may hold NaN and
    inf (spec.py): the output equals the one on a clean cache. Caught: the Pallas GPU kernel
    and both references multiplied those V rows by p = 0 (0 * NaN = NaN)."""
    b, h, kvh, d, ps, pages = 2, 4, 2, 16, 16, 3
    lens = np.array([21, 48])
    q = rng.standard_normal((b, h, d)).astype(np.float32)
    k, v = (rng.standard_normal((b * pages, ps, kvh, d)).astype(np.float32) for _ in range(2))
    table = np.arange(b * pages, dtype=np.int32).reshape(b, pages)
    if not paged:  # the same data as a contiguous cache
        k, v = (x.reshape(b, pages * ps, kvh, d) for x in (k, v))
    dirty = [x.copy() for x in (k, v)]
    for x in dirty:
        rows = x.reshape(b, pages * ps, kvh, d)  # a view: row 0's positions >= 21
        rows[0, lens[0]:] = np.nan
        rows[0, -1] = np.inf
    if framework == "torch":
        def run(kk, vv):
            kw = dict(block_table=torch.from_numpy(table)) if paged else {}
            return torch_ops.decode_attention(torch.from_numpy(q), torch.from_numpy(kk), torch.from_numpy(vv),
                                              torch.from_numpy(lens), impl=impl, **kw).numpy()
    else:
        def run(kk, vv):
            kw = dict(block_table=jnp.asarray(table)) if paged else {}
            return np.asarray(jax_ops.decode_attention(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(vv),
                                                       jnp.asarray(lens), impl=impl, **kw))
    clean, got = run(k, v), run(*dirty)
    assert np.isfinite(got).all(), f"{impl}: NaN/inf past L reached the output"
    np.testing.assert_array_equal(got, clean)
