"""TPU Pallas decode (kernels/decode/pallas_tpu_decode.py) against the float64 decode reference.

Runs in TPU interpret mode (no TPU here); ``tests/test_attention_pallas_tpu.py`` lowers the
kernel for TPU with ``jax.export``. Bound: ``assert_close`` against the jnp reference in the
same dtype (``upcast=False``).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops
from kernels.decode import reference as decode_reference
from kernels.decode import reference_jax as decode_reference_jax
from kernels.decode.pallas_tpu_decode import DEFAULT_DECODE_BLOCKS

from conftest import assert_close

F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)


DECODE_CASES = [  # (batch, heads, kv_heads, max_len, head_dim, dtype, window, softcap)
    (4, 4, 2, 300, 64, F32, None, None),  # D % 128 != 0: all kv heads per tile; edge block
    (4, 8, 1, 257, 128, BF16, 17, 5.0),  # one kv head per tile; window
]


@pytest.mark.parametrize("case", DECODE_CASES,
                         ids=lambda c: f"b{c[0]}-h{c[1]}x{c[2]}-t{c[3]}-d{c[4]}-{c[5].name}"
                         + (f"-win{c[6]}" if c[6] else "") + (f"-cap{c[7]:g}" if c[7] else ""))
def test_decode_matches_reference(rng, case):
    """jax_ops.decode_attention(impl="pallas_tpu") with lengths 0, max_len, one next to a
    tile edge (window + block_kv - 1: the window starts at key block_kv - 1, the last of the
    first tile; no window, block_kv + 1: one key in the second tile) and random ones."""
    b, h, kvh, t, d, dtype, window, softcap = case
    q = jnp.asarray(rng.standard_normal((b, h, d)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, t, kvh, d)), dtype) for _ in range(2))
    lens = rng.integers(1, t, b)
    bk = DEFAULT_DECODE_BLOCKS.block_kv  # the interpret-mode tiles
    lens[0], lens[1], lens[2] = 0, t, bk + 1 if window is None else window + bk - 1
    lens = jnp.asarray(lens, jnp.int32)
    scale = d**-0.5
    out = jax_ops.decode_attention(q, k, v, lens, window=window, softcap=softcap,
                                   impl="pallas_tpu")
    t64 = [torch.tensor(np.asarray(x, np.float64)) for x in (q, k, v)]
    ref64 = decode_reference._decode(*t64, torch.tensor(np.asarray(lens)), window=window,
                                     softcap=softcap, scale=scale)
    base = decode_reference_jax._decode(q, k, v, lens, window=window, softcap=softcap,
                                        scale=scale, upcast=False)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert np.all(np.asarray(out[0]) == 0)  # L == 0 -> zeros
    assert_close(out, ref64, base, dtype, "decode out")
