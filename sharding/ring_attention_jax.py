"""Ring attention (context parallelism) in JAX on the project's Pallas flash-attention kernels.

Computes exactly ``kernels.jax_ops.attention(q, k, v, causal=..., softcap=..., scale=...)``
(self-attention, q_len == kv_len; reference: ``kernels.attention.reference_jax``) with the
sequence axis sharded over one mesh axis of n devices. Under ``jax.shard_map`` every device
keeps its queries and passes its K/V block around the ring with ``lax.ppermute``; each step
runs the Pallas kernel on (local q, visiting K/V) and merges the partial output through the
kernel's log-sum-exp, so the result is exact up to rounding.

Kernel (``impl``): "pallas" is the GPU (Triton-lowered) kernel ``kernels/attention/
pallas_attention.py`` (lse base 2), "pallas_tpu" the TPU (Mosaic) kernel
``kernels/attention/pallas_tpu.py`` (lse natural log); each step's partial lse stays in the
kernel's own base, so the merge never converts. impl=None picks "pallas_tpu" when JAX's
default backend is a TPU, else "pallas". interpret=None compiles the kernel on its own
platform (GPU / TPU) and interprets it elsewhere (Pallas interpret mode / TPU interpret mode),
so impl="pallas_tpu" runs on CPU devices in TPU interpret mode (tests do this, MQA only: in
jax 0.10.2 a TPU-interpreted call with kv_heads > 1 inside a multi-device shard_map hangs).

The next block's ppermute is issued before the current step's kernel, so XLA can overlap
them (the n-th K/V hop is unused). The backward (``jax.custom_vjp``) runs the ring again
with the final o and lse: dQ accumulates in place, dK/dV accumulators travel with their K/V
block and arrive home after n hops.

Layout: zigzag. The sequence is cut into 2n chunks and device i holds chunks (i, 2n-1-i), so
under a causal mask every device does the same work: step 0 is one causal call on the local
block; a visiting block from device j < i is fully visible to all local queries but only its
first chunk is needed, from j > i only the second local chunk sees it (both fully visible,
causal=False); fully masked chunk pairs are never computed. Non-causal steps are full blocks.
``ring_attention`` takes and returns natural order (it permutes around the shard_map);
a model that keeps activations in zigzag order (the whole step permuted once, so only
attention sees the sequence split) calls ``ring_attention_zigzag`` (``ring_attention_local``
in a shard_map over its own activation specs) and gives rope the positions
``zigzag_indices`` returns: the model's ``model.jax_layers.attention`` does so for the
attention impl "ring", and ``sharding.jax_sharding.make_train_step`` feeds the positions.

Limits: q_len == kv_len divisible by 2n; MHA/GQA/MQA (k/v heads divide q heads), softcap;
window and segment_ids are refused (they need per-chunk position/segment offsets the kernel
does not take). dQ/dK/dV partials are rounded to the input dtype per step by the kernel, then
summed in fp32 (exact for fp32; bf16 adds ~n roundings). dK/dV accumulators travel in fp32.
Fast where: sequences too long for one device's memory, K/V transfer overlapped with a
step's 2 * c * c work (c = seq / 2n). Off its platform the kernel runs interpreted.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding, PartitionSpec as P

from kernels._platform import pallas_interpret_default
from kernels.attention import pallas_attention as pa
from kernels.attention import pallas_tpu as pt
from kernels.attention.spec import check_attention_args
from kernels.jax_ops import JAX_DTYPES


def zigzag_indices(seq_len: int, n: int) -> np.ndarray:
    """Natural positions in zigzag order: device i's rows are positions of chunks i, 2n-1-i."""
    if seq_len % (2 * n):
        raise ValueError(f"seq_len must split into 2 * n = {2 * n} equal zigzag chunks, got {seq_len}")
    c = seq_len // (2 * n)
    chunks = np.arange(seq_len).reshape(2 * n, c)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * n - 1 - i]]) for i in range(n)])


def check_ring_args(q, k, v, *, n: int, causal, window, softcap, scale, segment_ids):
    """Validate like the attention API, plus the ring's limits; return the AttentionProblem."""
    problem, _, _ = check_attention_args(q, k, v, causal=causal, window=window, softcap=softcap,
                                         scale=scale, segment_ids=segment_ids, dtypes=JAX_DTYPES)
    if window is not None:
        raise ValueError(f"ring attention does not support window (got window={window}); use None")
    if segment_ids is not None:
        raise ValueError("ring attention does not support segment_ids (got an array); use None")
    if problem.q_len != problem.kv_len:
        raise ValueError(f"ring attention needs q_len == kv_len, got q_len {problem.q_len} "
                         f"and kv_len {problem.kv_len}")
    if problem.q_len % (2 * n):
        raise ValueError(f"sequence length (q/k/v axis 1) must split into 2 * n = {2 * n} equal "
                         f"zigzag chunks for n = {n} ring devices, got {problem.q_len}")
    return problem


RING_IMPLS = ("pallas", "pallas_tpu")


def resolve_impl(impl):
    """impl=None: "pallas_tpu" on a TPU backend, else "pallas"; anything else must be one of
    RING_IMPLS (ValueError naming it)."""
    if impl is None:
        return "pallas_tpu" if jax.default_backend() == "tpu" else "pallas"
    if impl not in RING_IMPLS:
        raise ValueError(f"impl must be one of {RING_IMPLS} or None, got {impl!r}")
    return impl


# --- lse adapters: kernel layout <-> [B, S, H] (-inf = no key), in the kernel's own base.
# "pallas": folded [B, KVH, rows_p], base 2, +inf = no key; "pallas_tpu": [B, KVH, rows, 1],
# natural log, +inf = no key.

def _natural(cfg) -> bool:
    """Whether ``cfg`` is the TPU kernel's (natural-log lse) rather than the GPU kernel's."""
    return isinstance(cfg, pt._Config)


def _lse_unfold(lse_f, q_shape):
    b, s, h, _ = q_shape
    kvh = lse_f.shape[1]
    lse = lse_f[:, :, : s * (h // kvh)].reshape(b, kvh, s, h // kvh)
    lse = lse.transpose(0, 2, 1, 3).reshape(b, s, h)
    return jnp.where(lse == jnp.inf, -jnp.inf, lse)  # no key seen: weight 0 in the merge


def _lse_fold(lse, q_shape, kv_len, kvh, cfg):
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)  # kernel convention: p = exp(s - inf) = 0
    if _natural(cfg):  # TPU: unpadded rows (its backward pads them)
        return pt._fold(lse[..., None], kvh, q_shape[1] * (q_shape[2] // kvh), 1)
    rows_p = pa._tiles(q_shape, kv_len, kvh, cfg, False)[1]
    return pa._fold(lse[..., None], kvh, rows_p, 1)[..., 0]


def _attend(q, k, v, cfg):
    """One kernel call -> (o fp32 [B, Sq, H, D], lse [B, Sq, H] in the kernel's base, -inf
    where no key)."""
    if _natural(cfg):
        o, lse_f = pt._forward(q, k, v, None, None, cfg)
        lse_f = lse_f[..., 0]
    else:
        o, lse_f = pa._forward(q, k, v, None, None, cfg)
    return o.astype(jnp.float32), _lse_unfold(lse_f, q.shape)


def _merge(o, lse, o_t, lse_t, natural: bool):
    """Two partials (o normalized, lse in base e if ``natural`` else 2) -> their union."""
    logaddexp, exp = (jnp.logaddexp, jnp.exp) if natural else (jnp.logaddexp2, jnp.exp2)
    lse_new = logaddexp(lse, lse_t)
    safe = jnp.where(jnp.isfinite(lse_new), lse_new, 0.0)
    w, w_t = exp(lse - safe)[..., None], exp(lse_t - safe)[..., None]
    return o * w + o_t * w_t, lse_new


def _branch(i, t, n):
    """Causal step t > 0 on device i, K/V of device j = i - t: 0 if j < i, else 1."""
    return jnp.where((i - t) % n < i, 0, 1)


def _pad_rows(x, c, fill, front):
    pad = jnp.full((x.shape[0], c, *x.shape[2:]), fill, x.dtype)
    return jnp.concatenate([pad, x] if front else [x, pad], axis=1)


def _ring_forward(q, k, v, statics):
    axis, n, causal, cfg_full, cfg_diag = statics
    i, c = lax.axis_index(axis), q.shape[1] // 2
    perm = [(s, (s + 1) % n) for s in range(n)]
    o, lse = _attend(q, k, v, cfg_diag if causal else cfg_full)  # step 0: own block

    def visiting(t, k, v):
        if not causal:
            return _attend(q, k, v, cfg_full)
        return lax.switch(_branch(i, t, n), [
            lambda: _attend(q, k[:, :c], v[:, :c], cfg_full),  # j < i: first kv chunk only
            lambda: tuple(_pad_rows(x, c, f, True) for x, f in  # j > i: second q chunk only
                          zip(_attend(q[:, c:], k, v, cfg_full), (0.0, -jnp.inf))),
        ])

    def body(t, carry):
        kv, o, lse = carry
        nxt = lax.ppermute(kv, axis, perm)  # in flight while this step computes (last: unused)
        return (nxt, *_merge(o, lse, *visiting(t, *kv), _natural(cfg_full)))

    kv = lax.ppermute((k, v), axis, perm)  # independent of step 0: overlaps it
    _, o, lse = lax.fori_loop(1, n, body, (kv, o, lse))
    return o.astype(q.dtype), lse


def _grads(q, k, v, o, lse, do, cfg):
    """One backward kernel call with the final o, lse -> fp32 (dq, dk, dv)."""
    lse_f = _lse_fold(lse, q.shape, k.shape[1], k.shape[2], cfg)
    backward = pt._backward if _natural(cfg) else pa._backward
    return tuple(g.astype(jnp.float32) for g in backward(q, k, v, None, None, o, lse_f, do, cfg))


def _ring_backward(statics, res, do):
    axis, n, causal, cfg_full, cfg_diag = statics
    q, k, v, o, lse = res
    i, c = lax.axis_index(axis), q.shape[1] // 2
    perm = [(s, (s + 1) % n) for s in range(n)]
    dq, dk, dv = _grads(q, k, v, o, lse, do, cfg_diag if causal else cfg_full)  # step 0

    def visiting(t, k, v):
        if not causal:
            return _grads(q, k, v, o, lse, do, cfg_full)

        def first_kv():  # j < i: all queries, first kv chunk
            dq, dk, dv = _grads(q, k[:, :c], v[:, :c], o, lse, do, cfg_full)
            return dq, _pad_rows(dk, c, 0.0, False), _pad_rows(dv, c, 0.0, False)

        def second_q():  # j > i: second q chunk, all kv
            dq, dk, dv = _grads(q[:, c:], k, v, o[:, c:], lse[:, c:], do[:, c:], cfg_full)
            return _pad_rows(dq, c, 0.0, True), dk, dv

        return lax.switch(_branch(i, t, n), [first_kv, second_q])

    def body(t, carry):
        kv, (dk, dv), dq = carry  # dk/dv: the accumulators of the block in kv, just arrived
        nxt = lax.ppermute(kv, axis, perm)  # in flight while this step computes (last: unused)
        dq_t, dk_t, dv_t = visiting(t, *kv)
        acc = lax.ppermute((dk + dk_t, dv + dv_t), axis, perm)  # travel with their block
        return nxt, acc, dq + dq_t

    kv, acc = lax.ppermute(((k, v), (dk, dv)), axis, perm)
    _, (dk, dv), dq = lax.fori_loop(1, n, body, (kv, acc, dq))  # n-th hop brought dk/dv home
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ring(q, k, v, statics):
    return _ring_forward(q, k, v, statics)[0]


def _ring_fwd(q, k, v, statics):
    o, lse = _ring_forward(q, k, v, statics)
    return o, (q, k, v, o, lse)


_ring.defvjp(_ring_fwd, _ring_backward)


def _kernel_config(impl, head_dim, blocks, interpret):
    """functools.partial of the chosen kernel's _Config with blocks and interpret resolved."""
    if impl == "pallas_tpu":
        if interpret is None:
            interpret = pt.default_interpret()
        elif interpret is True:
            interpret = pltpu.InterpretParams()
        if blocks is None:
            blocks = pt.DEFAULT_BLOCKS if interpret else pt.chip_blocks()
        if not isinstance(blocks, pt.TpuAttentionBlocks):
            raise TypeError(f"impl='pallas_tpu' needs blocks=TpuAttentionBlocks or None, got "
                            f"{type(blocks).__name__}")
        return functools.partial(pt._Config, blocks=blocks, interpret=interpret)
    if interpret is None:
        interpret = pallas_interpret_default()
    if blocks is None:
        blocks = pa.default_blocks(head_dim, interpret=interpret)
    if isinstance(blocks, pt.TpuAttentionBlocks):
        raise TypeError("impl='pallas' (the GPU kernel) got TPU blocks (TpuAttentionBlocks); "
                        "pass its own blocks or None")
    return functools.partial(pa._Config, blocks=blocks, interpret=bool(interpret))


def ring_attention_local(q, k, v, *, axis_name, n: int, causal: bool, scale: float,
                         softcap: float | None = None, blocks=None, interpret=None, impl=None):
    """Ring attention on this device's zigzag shard [B, 2c, H, D] (call inside shard_map).

    n: the size of ``axis_name``; arguments must already be checked (``check_ring_args`` on
    the global shapes). impl: "pallas" (GPU kernel), "pallas_tpu" (TPU kernel) or None (by
    JAX's default backend, see the module docstring); blocks: that kernel's tile dataclass.
    Differentiable in q, k, v.
    """
    if q.shape[1] % 2 or k.shape[1] != q.shape[1]:
        raise ValueError(f"local q and k/v lengths must be equal and even (two zigzag chunks), "
                         f"got q {q.shape[1]} and k/v {k.shape[1]}")
    cfg = functools.partial(_kernel_config(resolve_impl(impl), q.shape[-1], blocks, interpret),
                            window=None, softcap=softcap, scale=float(scale))
    statics = (axis_name, int(n), bool(causal), cfg(causal=False), cfg(causal=True))
    return _ring(q, k, v, statics)


def _chunk_home(m: int, n: int) -> int:
    """Device that holds natural chunk m of 2n in the zigzag layout."""
    return m if m < n else 2 * n - 1 - m


def _to_zigzag(x, axis, n):
    """Contiguous shard (chunks 2d, 2d+1) -> zigzag shard (chunks d, 2n-1-d): two ppermutes.

    Device d receives one even and one odd chunk; the even one is its first (chunk d) iff d
    is even.
    """
    c, d = x.shape[1] // 2, lax.axis_index(axis)
    even = lax.ppermute(x[:, :c], axis, [(s, _chunk_home(2 * s, n)) for s in range(n)])
    odd = lax.ppermute(x[:, c:], axis, [(s, _chunk_home(2 * s + 1, n)) for s in range(n)])
    return jnp.where(d % 2 == 0, jnp.concatenate([even, odd], 1), jnp.concatenate([odd, even], 1))


def _from_zigzag(y, axis, n):
    """Inverse of _to_zigzag: chunk m goes back to device m // 2, slot m % 2."""
    c, d = y.shape[1] // 2, lax.axis_index(axis)
    first_even = d % 2 == 0
    even = jnp.where(first_even, y[:, :c], y[:, c:])
    odd = jnp.where(first_even, y[:, c:], y[:, :c])
    even = lax.ppermute(even, axis, [(s, (s if s % 2 == 0 else 2 * n - 1 - s) // 2)
                                     for s in range(n)])
    odd = lax.ppermute(odd, axis, [(s, (s if s % 2 else 2 * n - 1 - s) // 2) for s in range(n)])
    return jnp.concatenate([even, odd], 1)


def ring_attention_zigzag(q, k, v, *, mesh, axis_name: str, q_spec, kv_spec, causal=True, softcap=None,
                          scale=None, window=None, segment_ids=None, blocks=None, interpret=None,
                          impl=None):
    """attention(q, k, v) on a sequence in ZIGZAG order, sharded contiguously on ``axis_name``.

    q [B, S, H, D], k, v [B, S, KVH, D] with shardings ``q_spec`` / ``kv_spec``
    (PartitionSpecs whose dim 1 is ``axis_name``; batch / head dims may be split too); each
    device's contiguous slice of the zigzag order is then exactly its zigzag shard, so no
    permutation happens here. Returns o [B, S, H, D] in zigzag order, sharded like q.
    impl: the kernel, as ``ring_attention_local``.
    """
    for name, spec in (("q_spec", q_spec), ("kv_spec", kv_spec)):
        if len(spec) != 4 or spec[1] != axis_name:
            raise ValueError(f"{name} must be a 4-dim PartitionSpec split on dim 1 by {axis_name!r}, got {spec}")
    n = int(mesh.shape[axis_name])
    problem = check_ring_args(q, k, v, n=n, causal=causal, window=window, softcap=softcap,
                              scale=scale, segment_ids=segment_ids)
    impl = resolve_impl(impl)
    attend = functools.partial(ring_attention_local, axis_name=axis_name, n=n, causal=causal,
                               scale=problem.scale, softcap=problem.softcap, blocks=blocks,
                               interpret=interpret, impl=impl)
    return jax.shard_map(attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v)  # pallas_call carries no varying-axis types


def ring_attention(q, k, v, *, mesh, axis_name, causal=False, softcap=None, scale=None,
                   window=None, segment_ids=None, blocks=None, interpret=None, impl=None):
    """attention(q, k, v) with the sequence sharded over ``mesh.shape[axis_name]`` devices.

    q [B, S, H, D], k, v [B, S, KVH, D] and o [B, S, H, D] in natural order, sharded
    contiguously on S over ``axis_name`` (``P(None, axis_name)``). Inside, each shard moves
    to the zigzag layout and back with two ppermutes. Differentiable in q, k, v; on a mesh
    with Explicit axes (``jax.make_mesh``'s default) take its vjp under ``jax.jit``, where the
    cotangent gets the output's sharding. impl: "pallas" (GPU kernel), "pallas_tpu" (TPU
    kernel) or None (TPU kernel on a TPU backend, else the GPU one).
    """
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name must be one of the mesh axes {tuple(mesh.shape)}, got {axis_name!r}")
    n = int(mesh.shape[axis_name])
    problem = check_ring_args(q, k, v, n=n, causal=causal, window=window, softcap=softcap,
                              scale=scale, segment_ids=segment_ids)
    impl = resolve_impl(impl)
    attend = functools.partial(ring_attention_local, axis_name=axis_name, n=n, causal=causal,
                               scale=problem.scale, softcap=problem.softcap, blocks=blocks,
                               interpret=interpret, impl=impl)

    def local(q, k, v):
        zq, zk, zv = (_to_zigzag(x, axis_name, n) for x in (q, k, v))
        return _from_zigzag(attend(zq, zk, zv), axis_name, n)

    spec = P(None, axis_name, None, None)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                            check_vma=False)  # pallas_call carries no varying-axis types
    # device_put: an Explicit-axes mesh (jax.make_mesh's default) wants inputs already sharded
    put = functools.partial(jax.device_put, device=NamedSharding(mesh, spec))
    return sharded(*(put(x) for x in (q, k, v)))
