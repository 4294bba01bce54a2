"""Backward-pass cases found by mutating the attention backward kernels (rounds 4A and
4A-bis): each test below fails with the named mutation and passes without it (see its docstring).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from attention_cases import AttentionCase, make_inputs, torch_truth
from conftest import assert_close

from kernels.attention import pallas_tpu, reference
from kernels.attention.pallas_mgpu_bwd_kernels import q_tile_range
from kernels.attention.pallas_mgpu_kernels import MgpuTileStatics
from kernels.attention.pallas_tpu import DEFAULT_BLOCKS
from kernels.attention.reference import attention_mask
from kernels.attention.triton_attention import TritonAttentionBlocks

from test_attention_triton import Case, _check_against_reference, _inputs

# Triton 3.6's interpreter converts its 1-element scalar arrays with int() (numpy deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def _touched_tiles(q_len, kv_len, group, causal, window, bq, bk):
    """[q tiles, kv tiles] bool: the (folded q tile, key block) pairs holding a visible pair."""
    rows = np.repeat(attention_mask(q_len, kv_len, causal=causal, window=window)[0].numpy(), group, axis=0)
    nq, nk = -(-rows.shape[0] // bq), -(-kv_len // bk)
    rows = np.pad(rows, ((0, nq * bq - rows.shape[0]), (0, nk * bk - kv_len)))
    return rows.reshape(nq, bq, nk, bk).any(axis=(1, 3))


# 64-row / 64-key tiles (the Mosaic GPU minimum). The interpret-mode gradient cases never put a
# key block's first or last viewer at a q-tile edge (the residue cases there are forward only).
@pytest.mark.parametrize("q_len,kv_len,group,causal,window", [
    (64, 65, 1, True, None),  # shift 1: key 64 is first seen by row 63, the last of q tile 0
    (128, 128, 1, False, 2),  # window 2: key 63 is last seen by row 64, the first of q tile 1
    (100, 130, 2, True, None), (70, 100, 2, False, 24), (40, 300, 4, True, 40),
])
def test_mgpu_dkdv_q_tile_range_covers_the_mask(q_len, kv_len, group, causal, window):
    """Every q tile holding a (row, key) pair that the mask lets through is in q_tile_range(j)
    of the dK/dV kernel. Catches, in pallas_mgpu_bwd_kernels.q_tile_range,
    ``r_lo = (first_key - t.offset + 1) * group`` (the shift-1 case: dK/dV of key 64 came out 0)
    and ``r_hi = (last_key + t.window - t.offset - 1) * group`` (the window-2 case: q tile 1
    skipped for key block 0), both of which pass tests/test_attention_pallas_mgpu.py."""
    bq = bk = 64
    t = MgpuTileStatics(q_len=q_len, kv_len=kv_len, kv_len_padded=-(-kv_len // bk) * bk, group=group,
                        block_q=bq, block_kv=bk, num_stages=2, d_chunk=64, num_chunks=1, causal=causal,
                        window=window, softcap=None, scale=1.0, layout_hints=False)
    touched = _touched_tiles(q_len, kv_len, group, causal, window, bq, bk)
    tiles = np.arange(touched.shape[0])
    for j in range(touched.shape[1]):
        lo, hi = (int(x) for x in q_tile_range(j, t))
        missed = tiles[touched[:, j] & ((tiles < lo) | (tiles >= hi))]
        assert missed.size == 0, f"key block {j}: q tiles {missed.tolist()} see it, outside [{lo}, {hi})"


# The Gluon dK/dV pass (CPU emulator), MHA on 64-row blocks and 128-key blocks: a row block
# past the causal diagonal but ending at the window's far edge, or one starting one key short
# of the diagonal, must still be masked.
GLUON_EDGES = [
    # shift 62 = -2 mod 64: row block 64 starts at query 64 (position 126), one key short of
    # key block 0's last key 127
    Case(1, 66, 128, 1, 1, 64, causal=True),
    # shift 63, window 190: row block 64 (positions 127..190) is past key block 0's diagonal,
    # and its last row (position 190) is the first whose window no longer holds key 0
    Case(1, 128, 191, 1, 1, 64, causal=True, window=190),
    # shift 1: key 128 (block 1) is first seen by query 127, the last row of row block 64
    Case(1, 128, 129, 1, 1, 64, causal=True),
    # window 2: key 127 (the last of block 0) is last seen by query 128, the first of row block 128
    Case(1, 192, 192, 1, 1, 64, window=2),
]
# (key, query) of the pair each case turns on: aligned, so that its probability is near 1
GLUON_PAIRS = [(127, 64), (0, 127), (128, 127), (127, 128)]


@pytest.mark.parametrize("case,pair", list(zip(GLUON_EDGES, GLUON_PAIRS)), ids=[c.id for c in GLUON_EDGES])
def test_gluon_dkdv_masks_the_row_blocks_at_the_band_edges(rng, case, pair):
    """Catches, in gluon_bwd_kernels, ``mask_until = (start_n + BLOCK_N - 2 - shift) * GROUP``
    (causal case: row block 64 unmasked, dK/dV of key 127 pick up query 64) and ``window_edge =
    (start_n + window - shift + 1) * GROUP`` (window case: row block 64 unmasked, dK/dV of key 0
    pick up query 127) and ``lo = (start_n - shift + 1) * GROUP // BLOCK_M * BLOCK_M`` (shift-1
    case: row block 64 skipped for key block 1, dK/dV of key 128 lose query 127) and ``hi =
    (n_last + window - shift - 1) * GROUP`` (window-2 case: row block 128 skipped for key block
    0, dK/dV of key 127 lose query 128), all four of which pass tests/test_gluon_emulator.py.
    The pair's key is aligned with its query (a score of ~24 against a log-sum-exp of ~6), so a
    leaked or lost pair is far above the fp16 bound; with random keys it is ~1/190 of one row
    and hides under it."""
    (q, k, v), do, kwargs = _inputs(rng, case)
    key, query = pair
    k[:, key] = 3 * q[:, query]
    tensors = (q, k, v)
    bwd = TritonAttentionBlocks(64, 128, 8, 2, dq_block_m=64, dq_block_n=64, gluon_dkdv=True, dkdv_splits=1)
    _check_against_reference(tensors, do, torch.float16, kwargs, blocks=(TritonAttentionBlocks(64, 64, 4, 1), bwd))


def _torch_fp32_dq(q, k, v, do, **flags):
    """dQ of the torch reference in float32 (the same-precision baseline), by autograd."""
    q, k, v = (torch.tensor(np.asarray(x), requires_grad=(i == 0)) for i, x in enumerate((q, k, v)))
    o = reference._attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, upcast=False, **flags)
    o.backward(torch.tensor(np.asarray(do)))
    return q.grad


def test_pallas_tpu_dq_masks_the_window_tile_before_the_full_ones(rng):
    """One query at position 255 with window 200 over two 128-key tiles: key tile 1 is wholly
    inside the window (unmasked), key tile 0 is cut by it (keys 0..55 hidden). Catches, in
    pallas_tpu_kernels.dq_kernel, ``(j + 1 >= kv_flo[i])`` for ``(j >= kv_flo[i])``: tile 0
    then runs unmasked and dQ picks up the hidden keys. The TPU gradient cases of
    test_attention_pallas_tpu.py have no masked tile ahead of an unmasked one, so it passes
    them. Only the dQ kernel runs (interpret mode is slow): out and lse come from float64."""
    c = AttentionCase(1, 1, 1, 256, 64, jnp.dtype(jnp.float32), window=200)
    q, k, v, do, ids = make_inputs(rng, c)
    f = c.flags
    o64, dq64, _, _ = torch_truth(q, k, v, do, ids, **f)
    s = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64), np.asarray(k, np.float64)) * f["scale"]
    s = s[..., c.kv_len - c.window:]  # the keys query 0 (position 255) sees
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) + s.max(-1, keepdims=True)
    cfg = pallas_tpu._Config(causal=c.causal, window=c.window, softcap=c.softcap, scale=f["scale"],
                             blocks=DEFAULT_BLOCKS, interpret=pallas_tpu.default_interpret())
    o, lse = jnp.asarray(o64.numpy(), jnp.float32), jnp.asarray(lse, jnp.float32)  # lse [B, KVH, rows, 1]
    ops, dof, lse_p, delta = pallas_tpu._backward_operands(q, k, v, None, None, o, lse, do, cfg)
    kv_lo, kv_hi, kv_flo, kv_fhi = (np.asarray(r) for r in ops.tables)
    assert (kv_lo[0], kv_flo[0], kv_fhi[0], kv_hi[0]) == (0, 1, 2, 2)  # tile 0 masked, tile 1 not
    dq = pallas_tpu._unfold(pallas_tpu._backward_dq(ops, dof, lse_p, delta, cfg), q.shape)
    assert_close(dq, dq64, _torch_fp32_dq(q, k, v, do, **f), c.dtype, "dq")
