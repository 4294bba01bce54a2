"""TPU Pallas attention and decode (kernels/attention/pallas_tpu.py, kernels/decode/pallas_tpu_decode.py).

No TPU here: the kernels run in TPU interpret mode (``pltpu.InterpretParams``, a CPU simulator
of VMEM / SMEM / DMAs and the grid), and a separate test lowers them for the TPU platform with
``jax.export`` (Pallas -> Mosaic, where block-shape and layout rules are enforced) without running.
Ground truth: float64 torch references (autograd for gradients) on the rounded inputs; baseline:
the jnp reference in the same dtype (``upcast=False``), whose error sets the bound through
``assert_close``. Splash attention (jax's TPU kernel) runs beside ours in the same interpret mode.
Shapes are tiny because interpret mode is slow (compiles dominate: ~1 s per kernel).
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import AttentionCase, jax_vjp, make_inputs, torch_truth
from jax.experimental.pallas import tpu as pltpu

from kernels import jax_ops
from kernels.attention import pallas_tpu, reference_jax
from kernels.attention.pallas_tpu import (
    DEFAULT_BLOCKS, TPU_BLOCKS, TpuAttentionBlocks, attention_pallas_tpu, candidate_blocks,
    chip_blocks)
from kernels.attention.pallas_tpu_kernels import TpuTileStatics, block_ranges
from kernels.decode.pallas_tpu_decode import (
    DEFAULT_DECODE_BLOCKS, TPU_DECODE_BLOCKS, TpuDecodeBlocks, decode_attention_pallas_tpu,
    decode_candidate_blocks, decode_chip_blocks)

from conftest import ATOL_FLOOR, ERROR_RATIO, assert_close, max_err

F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)


Case = AttentionCase

CASES = [
    Case(4, 1, 1, 1, 64, F32),
    Case(4, 2, 100, 257, 80, F32, causal=True),  # head_dim padded to 128 lanes
    Case(2, 2, 257, 100, 64, BF16, causal=True),  # Sq > Skv: leading rows see no key
    Case(4, 2, 100, 100, 128, BF16, window=16, softcap=5.0),
    Case(2, 1, 100, 100, 64, F32, segments=True, batch=2),
]
# 5 q tiles x 3 kv tiles at 128: causal + window skip tile pairs in all three kernels
MANY_TILES = Case(2, 1, 257, 257, 64, F32, causal=True, window=40, segments=True)










def _baseline(q, k, v, do, ids, **flags):
    return jax_vjp(lambda q, k, v: reference_jax._attention(
        q, k, v, q_segment_ids=ids[0], kv_segment_ids=ids[1], upcast=False, **flags), q, k, v, do)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(rng, case):
    """jax_ops.attention(impl="pallas_tpu"), forward and backward, against float64."""
    q, k, v, do, ids = make_inputs(rng, case)
    f = case.flags
    seg = None if ids[0] is None else ids
    kernel = jax_vjp(lambda q, k, v: jax_ops.attention(
        q, k, v, causal=f["causal"], window=f["window"], softcap=f["softcap"], scale=f["scale"],
        segment_ids=seg, impl="pallas_tpu"), q, k, v, do)
    truth = torch_truth(q, k, v, do, ids, **f)
    assert kernel[0].dtype == q.dtype and kernel[0].shape == q.shape
    for what, out, ref64, base in zip(("out", "dq", "dk", "dv"), kernel, truth,
                                      _baseline(q, k, v, do, ids, **f)):
        assert_close(out, ref64, base, case.dtype, what)


def test_kv_tile_in_compute_chunks(rng):
    """block_kv 256 in two block_kv_compute chunks of 128 (as the chip tables have, e.g. v4's
    512 / 1024 / 512): each chunk masks its own key columns. Causal, forward and backward."""
    c = Case(1, 1, 256, 256, 128, F32, causal=True)
    q, k, v, do, ids = make_inputs(rng, c)
    blocks = TpuAttentionBlocks(block_q=128, block_kv=256, block_kv_compute=128)
    kernel = jax_vjp(lambda q, k, v: attention_pallas_tpu(
        q, k, v, q_segment_ids=None, kv_segment_ids=None, blocks=blocks, **c.flags), q, k, v, do)
    truth = torch_truth(q, k, v, do, ids, **c.flags)
    for what, out, ref64, base in zip(("out", "dq", "dk", "dv"), kernel, truth,
                                      _baseline(q, k, v, do, ids, **c.flags)):
        assert_close(out, ref64, base, c.dtype, what)


def _races_found() -> bool:
    """The race detector's verdict for the last kernel interpreted (module state of jax 0.10)."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc

    assert ipc.races is not None, "no kernel ran under TPU interpret mode"
    return ipc.races.races_found


def test_many_tiles_with_race_detector(rng):
    """Three kernels on 2 simulated TensorCores, race detector on, one kernel at a time
    (the detector's state is per kernel); then the gradients against float64."""
    c = MANY_TILES
    q, k, v, do, ids = make_inputs(rng, c)
    interp = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    cfg = pallas_tpu._Config(causal=c.causal, window=c.window, softcap=c.softcap,
                             scale=c.flags["scale"], blocks=DEFAULT_BLOCKS, interpret=interp)
    o, lse = jax.jit(pallas_tpu._forward, static_argnums=5)(q, k, v, *ids, cfg)
    assert not _races_found(), "forward kernel"
    ops, dof, lse_p, delta = pallas_tpu._backward_operands(q, k, v, *ids, o, lse, do, cfg)
    assert (ops.nq, ops.nk) == (5, 3)
    kv_lo, kv_hi, kv_flo, kv_fhi = (np.asarray(r) for r in ops.tables)
    assert np.any(kv_hi - kv_lo < ops.nk)  # some tile pairs are skipped
    dkp, dvp = pallas_tpu._backward_dkdv(ops, dof, lse_p, delta, cfg)
    assert not _races_found(), "dK/dV kernel"
    dqf = pallas_tpu._backward_dq(ops, dof, lse_p, delta, cfg)
    assert not _races_found(), "dQ kernel"
    unkv = lambda x: x[:, :, :c.kv_len, :c.head_dim].transpose(0, 2, 1, 3)
    kernel = (o, pallas_tpu._unfold(dqf, q.shape), unkv(dkp), unkv(dvp))
    truth = torch_truth(q, k, v, do, ids, **c.flags)
    for what, out, ref64, base in zip(("out", "dq", "dk", "dv"), kernel, truth,
                                      _baseline(q, k, v, do, ids, **c.flags)):
        assert_close(out, ref64, base, c.dtype, what)


def test_side_by_side_with_splash_attention(rng):
    """Causal MQA, q_len == kv_len == 256: ours and splash attention in the same TPU interpret
    mode, each against float64, and against each other within one same-precision bound."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    c = Case(2, 1, 256, 256, 128, F32, causal=True, softcap=10.0)
    q, k, v, do, ids = make_inputs(rng, c)
    scale = c.flags["scale"]
    mask = sm.MultiHeadMask([sm.CausalMask((c.q_len, c.kv_len))] * c.heads)
    splash = sk.make_splash_mqa_single_device(mask, block_sizes=sk.BlockSizes.get_default(),
                                              attn_logits_soft_cap=c.softcap)

    def splash_fn(q, k, v):  # [B, S, H, D] / [B, S, 1, D] -> splash's [H, S, D] / [S, D] per row
        o = jax.vmap(splash)((q * scale).transpose(0, 2, 1, 3), k[:, :, 0], v[:, :, 0])
        return o.transpose(0, 2, 1, 3)

    ours_fn = lambda q, k, v: attention_pallas_tpu(
        q, k, v, q_segment_ids=None, kv_segment_ids=None, **c.flags)
    with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
        ours = jax_vjp(ours_fn, q, k, v, do)
        theirs = jax_vjp(splash_fn, q, k, v, do)
    truth = torch_truth(q, k, v, do, ids, **c.flags)
    base = _baseline(q, k, v, do, ids, **c.flags)
    for what, a, b, ref64, bl in zip(("out", "dq", "dk", "dv"), ours, theirs, truth, base):
        assert_close(a, ref64, bl, c.dtype, what)
        assert_close(b, ref64, bl, c.dtype, f"splash {what}")
        # each other: within the bound either one has against float64 (not 2x it)
        agree = max_err(a, b)
        bound = ERROR_RATIO * max_err(bl, ref64) + ATOL_FLOOR[c.dtype.name] * max(
            1.0, float(np.abs(ref64.numpy()).max()))
        assert agree <= bound, f"ours vs splash {what}: {agree:.3e} > {bound:.3e}"


def _pallas_calls(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _pallas_calls(sub)


def test_lowers_for_tpu_without_running():
    """jit(grad) of jax_ops.attention(impl="pallas_tpu") and the decode kernel lower to Mosaic
    for TPU (jax.export, no TPU needed): the compiled path's block shapes and ops are legal.
    The three attention kernels take un-repeated K/V (kv_heads in the K operand)."""
    kvh, blocks = 2, TpuAttentionBlocks(256, 512, 256, 256, 256)
    q = jax.ShapeDtypeStruct((2, 300, 8, 80), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 700, kvh, 80), jnp.bfloat16)
    ids = (jax.ShapeDtypeStruct((2, 300), jnp.int32), jax.ShapeDtypeStruct((2, 700), jnp.int32))

    def loss(q, k, v, q_ids, kv_ids):
        o = attention_pallas_tpu(q, k, v, causal=True, window=128, softcap=30.0, scale=0.1,
                                 q_segment_ids=q_ids, kv_segment_ids=kv_ids, blocks=blocks,
                                 interpret=False)
        return jnp.sum(o.astype(jnp.float32))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    calls = list(_pallas_calls(jax.make_jaxpr(grad)(q, k, k, *ids).jaxpr))
    assert sorted(e.params["name"] for e in calls) == [
        "tpu_mqa_flash_bwd_dkdv", "tpu_mqa_flash_bwd_dq", "tpu_mqa_flash_fwd"]
    for e in calls:
        assert e.invars[5].aval.shape[1] == kvh  # k operand [B, KVH, Skv_pad, Dp] after 4 tables
    text = jax.export.export(grad, platforms=["tpu"])(q, k, k, *ids).mlir_module()
    assert text.count("tpu_custom_call") == 3

    for d in (64, 128):
        qd = jax.ShapeDtypeStruct((2, 8, d), jnp.bfloat16)
        cache = jax.ShapeDtypeStruct((2, 1000, kvh, d), jnp.bfloat16)
        lens = jax.ShapeDtypeStruct((2,), jnp.int32)
        fn = jax.jit(lambda q, k, v, n: decode_attention_pallas_tpu(
            q, k, v, n, window=100, softcap=None, scale=0.1, blocks=TpuDecodeBlocks(256),
            interpret=False))
        text = jax.export.export(fn, platforms=["tpu"])(qd, cache, cache, lens).mlir_module()
        assert text.count("tpu_custom_call") == 1


def _check_block_ranges(q_len, kv_len, group, causal, window, mask, bq=128, bk=128):
    """block_ranges' visible / unmasked tile intervals equal the tile pairs ``mask`` touches /
    fills ([q_len, kv_len] bool)."""
    t = TpuTileStatics(q_len=q_len, kv_len=kv_len, group=group, block_q=bq, block_kv=bk,
                       block_kv_compute=128, causal=causal, window=window, softcap=None,
                       scale=1.0, has_segments=False, kv_padded=True)
    rows = np.repeat(mask, group, axis=0)  # folded row r = s * G + g
    nq, nk = -(-rows.shape[0] // bq), -(-kv_len // bk)
    rows = np.pad(rows, ((0, nq * bq - rows.shape[0]), (0, nk * bk - kv_len)))
    tiles = rows.reshape(nq, bq, nk, bk)
    touched = tiles.any(axis=(1, 3))
    real = np.arange(nq * bq).reshape(nq, bq) < q_len * group  # rows that are not padding
    full = np.array([[tiles[a, real[a], b].all() for b in range(nk)] for a in range(nq)])
    full &= (np.arange(nk) + 1) * bk <= kv_len  # a tile past kv_len keeps its mask
    (kv_lo, kv_hi, kv_flo, kv_fhi), (q_lo, q_hi, q_flo, q_fhi) = block_ranges(t, nq, nk)
    i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
    what = f"q_len={q_len} kv_len={kv_len} group={group} causal={causal} window={window} bk={bk}"
    assert np.array_equal((j >= kv_lo[:, None]) & (j < kv_hi[:, None]), touched), what
    assert np.array_equal((i >= q_lo[None, :]) & (i < q_hi[None, :]), touched), what
    assert np.array_equal((j >= kv_flo[:, None]) & (j < kv_fhi[:, None]), full), what
    assert np.array_equal((i >= q_flo[None, :]) & (i < q_fhi[None, :]), full), what


@pytest.mark.parametrize("q_len,kv_len,group,causal,window", [
    (100, 257, 4, True, None), (257, 100, 1, True, None), (300, 300, 2, True, 40),
    (50, 400, 3, False, 70), (130, 130, 1, False, None)])
def test_block_ranges_match_the_mask(q_len, kv_len, group, causal, window):
    """The host-computed visible tile intervals cover exactly the tile pairs the mask touches."""
    mask = np.asarray(reference_jax.attention_mask(q_len, kv_len, causal=causal, window=window))[0]
    _check_block_ranges(q_len, kv_len, group, causal, window, mask)


def test_block_ranges_at_tile_edge_residues():
    """The same over lengths and windows at 0, +-1, +-2 of a tile edge (numpy only, < 1 s): a
    query or a window edge next to a tile boundary is where an off-by-one in a bound shows."""
    for q_len in (1, 2, 126, 127, 128, 129, 256, 300):
        for kv_len in (1, 2, 128, 129, 130, 256, 383):
            q_pos = np.arange(q_len)[:, None] + kv_len - q_len
            k_pos = np.arange(kv_len)[None, :]
            for window in (None, 1, 2, 3, 127, 128, 129, 130, 254):
                for causal in (True, False) if window is None else (True,):
                    mask = np.ones((q_len, kv_len), bool)
                    if causal:
                        mask &= k_pos <= q_pos
                    if window is not None:
                        mask &= k_pos > q_pos - window
                    for group, bk in ((1, 128), (3, 128), (2, 256)):
                        _check_block_ranges(q_len, kv_len, group, causal, window, mask, bk=bk)


@pytest.mark.parametrize("kwargs", [dict(block_q=100), dict(block_kv=64), dict(block_q_bwd=0),
                                    dict(block_kv_bwd=True), dict(block_kv_compute=384)],
                         ids=lambda kw: next(iter(kw)))
def test_blocks_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TpuAttentionBlocks(**kwargs)
    with pytest.raises(ValueError, match="block_kv"):
        TpuDecodeBlocks(block_kv=200)


def test_chip_tables():
    """Tiles per chip generation; every device kind JAX reports for a chip finds it; CPU gets
    the defaults; sweeps are valid."""
    assert set(TPU_BLOCKS) == set(TPU_DECODE_BLOCKS) == {"v4", "v5e", "v5p", "v6e"}
    aliases = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
               "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known kind never warns
        for kind, gen in aliases.items():
            assert chip_blocks(kind) is TPU_BLOCKS[gen], kind
            assert decode_chip_blocks(kind) is TPU_DECODE_BLOCKS[gen], kind
        assert chip_blocks("cpu") is DEFAULT_BLOCKS and chip_blocks() is DEFAULT_BLOCKS
        assert decode_chip_blocks("cpu") is DEFAULT_DECODE_BLOCKS
    assert chip_blocks("TPU v5") != DEFAULT_BLOCKS  # the audit's case: v5p as jax names it
    for kind in (*aliases, "cpu"):
        cands = candidate_blocks(kind)
        assert cands[0] == chip_blocks(kind) and len(set(cands)) == len(cands) > 4
        assert decode_candidate_blocks(kind)[0] == decode_chip_blocks(kind)
    with pytest.raises(ValueError, match="impl"):
        jax_ops.attention(jnp.zeros((1, 4, 2, 64)), jnp.zeros((1, 4, 1, 64)),
                          jnp.zeros((1, 4, 1, 64)), impl="pallas_tpu_v5")


def test_unknown_tpu_kind_warns_once():
    """A TPU kind outside the alias table (or a generation without an entry) gets the defaults
    with one RuntimeWarning naming it, never silently."""
    from kernels import _tpu_chips

    _tpu_chips._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="'TPU v99'"):
        assert chip_blocks("TPU v99") is DEFAULT_BLOCKS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert chip_blocks("TPU v99") is DEFAULT_BLOCKS  # once per kind
    with pytest.warns(RuntimeWarning, match="generation 'v3'"):
        assert decode_chip_blocks("TPU v3") is DEFAULT_DECODE_BLOCKS


def test_chip_aliases_match_jax():
    """kernels/_tpu_chips.py's alias table is jax's chip_version_from_device_kind (private in
    jax 0.10.2, hence the copy): same kinds, same generations."""
    from jax._src.pallas.mosaic import tpu_info

    from kernels import _tpu_chips

    for kind, gen in _tpu_chips.CHIP_ALIASES.items():
        assert str(tpu_info.chip_version_from_device_kind(kind)) == gen, kind
    for version in pltpu.ChipVersion:  # every chip jax knows has an alias here
        assert str(version) in _tpu_chips.CHIP_ALIASES.values(), version
    assert tpu_info.chip_version_from_device_kind("TPU v99") is None
    assert _tpu_chips.chip_generation("TPU v99") is None
